"""Communication: bytes per site per round vs the fp32 model, and float16 update compression.

The bytes are those of the Flower messages' array payloads, encoded by the site's own code
(``client.app.encode_update``, ``client.app.record_from_state``): uplink = one train reply,
downlink = the global weights sent with the train and the evaluate message (fp32). The same
2-site dual-center run (same seed, same data) then runs twice through the simulation engine,
with ``update-dtype=float32`` and ``update-dtype=float16``: reported are the uplink size
ratio and the change of the final global AUC (target: half the bytes, ``|delta AUC| <=
0.005``) and of the final weights.

    python -m benchmarks.communication [--quick]
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import Target, bench_main, ratio
from benchmarks.platform_overhead import bench_setup, make_data
from client.app import encode_update, record_from_state
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
        "state": torch.load(out_dir / "fedavg" / "global_model.pt"),
        "wall_seconds": float(entry["wall_seconds"]),
    }


def run(quick: bool = False) -> dict:
    setup = bench_setup(quick)
    if not quick:
        setup = {**setup, "rounds": 3, "local_epochs": 1}
    run_config = {
        "task": "rcc-grading",
        "backbone": setup["backbone"],
        "image-size": setup["image_size"],
        "num-server-rounds": setup["rounds"],
        "local-epochs": setup["local_epochs"],
        "batch-size": 16,
        "learning-rate": 0.02,
        "client-threads": 1,
    }
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="fedfusion-comm-") as tmp:
        manifest = make_data(setup, Path(tmp) / "data")
        for dtype in ("float32", "float16"):
            runs[dtype] = _federate(
                manifest, {**run_config, "update-dtype": dtype}, Path(tmp) / dtype
            )
    state = runs["float32"]["state"]
    model_fp32 = sum(4 * v.numel() for v in state.values() if v.is_floating_point())
    model_fp32 += sum(
        v.numel() * v.element_size() for v in state.values() if not v.is_floating_point()
    )
    downlink = 2 * _payload_bytes(record_from_state(state))  # train + evaluate messages
    uplink = {d: _payload_bytes(encode_update(state, state, d)) for d in ("float32", "float16")}
    delta_auc = runs["float16"]["auc"] - runs["float32"]["auc"]
    weight_diff = max(
        float((state[k].double() - runs["float16"]["state"][k].double()).abs().max())
        for k in state
        if state[k].is_floating_point()
    )
    return {
        "name": "communication",
        "description": DESCRIPTION,
        "setup": setup,
        "model_bytes_fp32": model_fp32,
        "uplink_bytes_per_site_per_round": uplink,
        "downlink_bytes_per_site_per_round": downlink,
        "auc": {d: r["auc"] for d, r in runs.items()},
        "round_aucs": {d: r["round_aucs"] for d, r in runs.items()},
        "final_weights_max_abs_difference": weight_diff,
        "wall_seconds": {d: r["wall_seconds"] for d, r in runs.items()},
        "ratios": {
            "uplink_fp32_over_model": ratio(uplink["float32"], model_fp32),
            "uplink_fp16_over_fp32": ratio(uplink["float16"], uplink["float32"]),
            "abs_delta_auc_fp16": abs(delta_auc),
        },
        "targets": {
            "uplink_fp16_over_fp32": Target(0.52, note="half the bytes (+ .npy headers)").to_dict(),
            "abs_delta_auc_fp16": Target(0.005, note="|delta AUC| <= 0.005").to_dict(),
        },
        "headline": {
            "fp32 model bytes": model_fp32,
            "uplink bytes per site per round (fp32 / fp16)": (
                f"{uplink['float32']:,} / {uplink['float16']:,}"
            ),
            "downlink bytes per site per round (fp32, train + evaluate)": downlink,
            "final global AUC (fp32 / fp16 updates)": (
                f"{runs['float32']['auc']:.4f} / {runs['float16']['auc']:.4f}"
            ),
            "final weights max |difference|": weight_diff,
        },
    }


def main() -> None:
    bench_main(run, DESCRIPTION)


if __name__ == "__main__":
    main()
