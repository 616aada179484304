"""Communication: bytes per site per round vs the fp32 model, and float16 update compression.

The bytes are those of the Flower messages' array payloads, encoded by the site's own code
(``client.app.encode_update``, ``client.app.record_from_state``): uplink = one train reply,
downlink = the global weights sent with the train and the evaluate message (fp32), for the
CPU-sized MUF-Net of the platform-overhead benchmark and for the CKD clinical GRU.

The AUC change needs a model that learns within a benchmark's budget: the CKD clinical task
(UCI CKD split into 3 simulated sites, the study's GRU) runs twice through the simulation
engine with the same seed and data, with ``update-dtype=float32`` and ``float16``; reported
are the uplink size ratio and the change of the final global AUC (target: half the bytes,
``|delta AUC| <= 0.005``).

    python -m benchmarks.communication [--quick]
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import Target, bench_main, ratio
from benchmarks.platform_overhead import bench_setup
from client.app import encode_update, record_from_state
from models import create_model_for_task
from server.config import RunConfig
from simulation.ckd import prepare_ckd_sites
from simulation.runner import SimulationOptions, simulate
from simulation.scenario import Scenario

__all__ = ["run", "main"]

DESCRIPTION = __doc__.splitlines()[0]


def _payload_bytes(record: Any) -> int:
    return sum(len(array.data) for array in record.values())


def _federate(manifest: Path, run_config: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    scenario = Scenario(name="communication", task=str(run_config["task"]), run=run_config)
    results = simulate(
        scenario, SimulationOptions(out_dir=out_dir, manifest=manifest, seed=0, cpus=2)
    )
    (entry,) = results["runs"]
    return {
        "auc": float(entry["final"]["global"]["auc"]),
        "round_aucs": [float(r["global"].get("auc", float("nan"))) for r in entry["rounds"]],
        "state": torch.load(out_dir / "fedavg" / "global_model.pt", weights_only=True),
        "wall_seconds": float(entry["wall_seconds"]),
    }


def _bytes(state: dict[str, torch.Tensor]) -> dict[str, int]:
    model = sum(
        v.numel() * (4 if v.is_floating_point() else v.element_size()) for v in state.values()
    )
    return {
        "model_fp32": model,
        "uplink_float32": _payload_bytes(encode_update(state, state, "float32")),
        "uplink_float16": _payload_bytes(encode_update(state, state, "float16")),
        "downlink": 2 * _payload_bytes(record_from_state(state)),  # train + evaluate
    }


def run(quick: bool = False) -> dict:
    setup = bench_setup(quick)
    mufnet_config = RunConfig.from_mapping(
        {"task": "rcc-grading", "backbone": setup["backbone"], "image-size": setup["image_size"]}
    )
    torch.manual_seed(0)
    mufnet = _bytes(create_model_for_task(mufnet_config.task_spec()).state_dict())
    rounds, epochs = (2, 1) if quick else (8, 2)
    run_config = {
        "num-server-rounds": rounds,
        "local-epochs": epochs,
        "batch-size": 16,
        "learning-rate": 0.2,
        "client-threads": 1,
    }
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="fedfusion-comm-") as tmp:
        manifest = prepare_ckd_sites(Path(tmp) / "data", seed=0)
        for dtype in ("float32", "float16"):
            runs[dtype] = _federate(
                manifest,
                {**run_config, "task": "ckd-risk", "update-dtype": dtype},
                Path(tmp) / dtype,
            )
    ckd = _bytes(runs["float32"]["state"])
    delta_auc = runs["float16"]["auc"] - runs["float32"]["auc"]
    return {
        "name": "communication",
        "description": DESCRIPTION,
        "mufnet": {"backbone": setup["backbone"], "image_size": setup["image_size"], **mufnet},
        "ckd_gru": ckd,
        "model_bytes_fp32": mufnet["model_fp32"],
        "uplink_bytes_per_site_per_round": {
            "mufnet": {"float32": mufnet["uplink_float32"], "float16": mufnet["uplink_float16"]},
            "ckd_gru": {"float32": ckd["uplink_float32"], "float16": ckd["uplink_float16"]},
        },
        "auc_run": {"task": "ckd-risk", "rounds": rounds, "local_epochs": epochs},
        "auc": {d: r["auc"] for d, r in runs.items()},
        "round_aucs": {d: r["round_aucs"] for d, r in runs.items()},
        "wall_seconds": {d: r["wall_seconds"] for d, r in runs.items()},
        "ratios": {
            "uplink_fp32_over_model": ratio(mufnet["uplink_float32"], mufnet["model_fp32"]),
            "uplink_fp16_over_fp32": ratio(mufnet["uplink_float16"], mufnet["uplink_float32"]),
            "uplink_fp16_over_fp32_ckd_gru": ratio(ckd["uplink_float16"], ckd["uplink_float32"]),
            "abs_delta_auc_fp16": abs(delta_auc),
        },
        "targets": {
            "uplink_fp16_over_fp32": Target(0.52, note="half the bytes (+ .npy headers)").to_dict(),
            "abs_delta_auc_fp16": Target(0.005, note="|delta AUC| <= 0.005").to_dict(),
        },
        "headline": {
            "MUF-Net fp32 model bytes": mufnet["model_fp32"],
            "MUF-Net uplink bytes per site per round (fp32 / fp16)": (
                f"{mufnet['uplink_float32']:,} / {mufnet['uplink_float16']:,}"
            ),
            "MUF-Net downlink bytes per site per round (fp32, train + evaluate)": mufnet[
                "downlink"
            ],
            "CKD GRU uplink bytes (fp32 / fp16)": (
                f"{ckd['uplink_float32']:,} / {ckd['uplink_float16']:,}"
            ),
            "CKD final global AUC (fp32 / fp16 updates)": (
                f"{runs['float32']['auc']:.4f} / {runs['float16']['auc']:.4f}"
            ),
        },
    }


def main() -> None:
    bench_main(run, DESCRIPTION)


if __name__ == "__main__":
    main()
