"""Cost and exactness of secure aggregation: the same simulation with and without SecAgg+.

Runs one scenario twice through ``simulation.runner.simulate`` with the same seed (plain
FedAvg, then ``secagg=true``) and reports wall time, per-round time and how far the secure
global model is from the plain one. Site training is deterministic on CPU, so after one round
the difference is exactly SecAgg+'s quantisation error (later rounds compound it through
training). Also times Flower's per-site SecAgg+ arithmetic (quantise + one mask per
neighbour) for a model of ``--params`` values, the part that grows with the model.

    python benchmarks/secagg_overhead.py --out /tmp/secagg-bench --rounds 1 --sites 3
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from flwr.common.secure_aggregation.quantization import quantize
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

from server.config import RunConfig
from simulation.runner import SimulationOptions, simulate
from simulation.scenario import load_scenario
from strategies.secagg import quantisation_error_bound

_SCENARIO = """
description = "secure aggregation benchmark"
task = "rcc-grading"

[data]
generator = "dual-center"
sites = {{ {sites} }}
images-per-patient = [1, 2]
image-size = {size}
high-grade-fraction = 0.4

[run]
backbone = "{backbone}"
image-size = {size}
num-server-rounds = {rounds}
batch-size = 8
learning-rate = 0.05
"""


def _model_difference(plain: Path, secure: Path) -> dict[str, float]:
    a = torch.load(plain / "fedavg" / "global_model.pt", weights_only=True)
    b = torch.load(secure / "fedavg" / "global_model.pt", weights_only=True)
    worst, squares, count = 0.0, 0.0, 0
    for key, value in a.items():
        if not value.is_floating_point() or not b[key].is_floating_point():
            continue
        diff = (value.double() - b[key].double()).abs()
        worst = max(worst, float(diff.max()))
        squares += float((diff**2).sum())
        count += diff.numel()
    return {"max_abs": worst, "rms": math.sqrt(squares / max(count, 1)), "values": count}


def _protocol_seconds(num_params: int, neighbours: int) -> float:
    """One site's SecAgg+ arithmetic for ``num_params`` values (quantise, add masks)."""
    update = [np.random.default_rng(0).normal(0, 1e-3, num_params).astype(np.float32)]
    started = time.perf_counter()
    quantised = quantize(update, 8.0, 2**22)
    for seed in range(neighbours + 1):  # private mask + one pairwise mask per neighbour
        mask = pseudo_rand_gen(seed.to_bytes(32, "little"), 2**32, [quantised[0].shape])
        quantised = [(quantised[0] + mask[0]) & (2**32 - 1)]
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--patients", type=int, default=8, help="patients per site")
    parser.add_argument("--size", type=int, default=32, help="image size")
    parser.add_argument("--backbone", default="test_efficientnet")
    parser.add_argument("--max-weight", type=float, default=100.0)
    parser.add_argument("--params", type=int, default=12_000_000, help="for the protocol timing")
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    args.out.mkdir(parents=True, exist_ok=True)
    names = ", ".join(f"site{i} = {args.patients}" for i in range(args.sites))
    scenario_path = args.out / "bench.toml"
    scenario_path.write_text(
        _SCENARIO.format(sites=names, size=args.size, backbone=args.backbone, rounds=args.rounds)
    )
    scenario = load_scenario(str(scenario_path))
    secure_overrides = {"secagg": True, "secagg-max-weight": args.max_weight}
    report: dict[str, object] = {"args": {k: str(v) for k, v in vars(args).items()}}
    runs = {}
    for name, overrides in (("plain", {}), ("secagg", secure_overrides)):
        out = args.out / name
        started = time.perf_counter()
        results = simulate(
            scenario,
            SimulationOptions(out_dir=out, seed=0, cpus=args.cpus, overrides=overrides),
        )
        (run,) = results["runs"]
        runs[name] = run
        report[name] = {
            "wall_seconds": time.perf_counter() - started,
            "round_seconds": [r["seconds"] for r in run["rounds"]],
        }
    report["final_model_difference"] = _model_difference(args.out / "plain", args.out / "secagg")
    counts = [m["num-examples"] for m in runs["secagg"]["rounds"][0]["train"].values()]
    config = RunConfig.from_mapping(secure_overrides)
    report["quantisation_error_bound_per_round"] = quantisation_error_bound(
        counts,
        clipping_range=config.secagg_clipping_range,
        quantization_range=config.secagg_quantization_range,
        max_weight=config.secagg_max_weight,
    )
    report["num_examples"] = counts
    report["protocol_seconds_per_site"] = {
        "params": args.params,
        "neighbours": args.sites - 1,
        "seconds": _protocol_seconds(args.params, args.sites - 1),
    }
    print(json.dumps(report, indent=2))  # noqa: T201  (a command-line report)


if __name__ == "__main__":
    main()
