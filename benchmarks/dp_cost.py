"""What local DP costs in training time: Opacus DP-SGD vs plain SGD, same model, same data.

One site's training split of the synthetic dual-center data (the RCC grading task), one
DP-safe MUF-Net (GroupNorm, so both sides run the identical network), one run: an epoch of plain
SGD and an epoch of DP-SGD (per-sample clipping + noise, Poisson sampling with the same
expected batch size) are timed alternately, after a warm-up epoch each that also fills the
decoded-image cache, and the ratio of the medians is reported. Opacus computes per-sample
gradients in one of several modes; every mode that works on this model is timed (``hooks``:
module hooks, Opacus' default; ``functorch``: ``torch.func`` vmap; ``ew``: expanded weights)
and the fastest is named; :func:`client.privacy.grad_sample_mode_for` picks ``ew`` for models
of plain layers (``site_mode`` in the result).

    python -m benchmarks.dp_cost            # writes benchmarks/results/dp_cost.json
    python -m benchmarks.dp_cost --quick    # a smaller run (seconds)

``run(quick)`` returns the suite's result dict (``benchmarks/_common.py``: ``name``,
``description``, ``ratios``, ``targets``); ``python -m benchmarks.run_all`` runs it with the rest.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from opacus import PrivacyEngine

from benchmarks._common import RESULTS_DIR, ratio, write_result
from client.dataset import make_loader
from client.manifest import load_manifest
from client.privacy import grad_sample_mode_for
from client.train import TrainConfig, train_local
from models import create_model_for_task, get_task
from simulation.synthetic import generate_dual_center

__all__ = ["run", "main", "GRAD_SAMPLE_MODES"]

_log = logging.getLogger(__name__)

DESCRIPTION = (
    "Opacus DP-SGD epoch time over a plain SGD epoch: same DP-safe MUF-Net, same site data, "
    "measured alternately in one run, per Opacus per-sample gradient mode"
)
#: Opacus per-sample gradient modes tried (a mode that fails on the model is reported as such).
GRAD_SAMPLE_MODES = ("hooks", "functorch", "ew")

_FULL = {
    "backbone": "test_efficientnet",
    "image_size": 64,
    "patients": 80,
    "batch_size": 16,
    "repeats": 3,
}
_QUICK = {
    "backbone": "test_efficientnet",
    "image_size": 32,
    "patients": 12,
    "batch_size": 8,
    "repeats": 1,
}


def _epoch_timer(
    model: torch.nn.Module,
    loader: Any,
    optimizer: torch.optim.Optimizer,
    class_counts: list[int],
) -> Callable[[], float]:
    """A function that trains one epoch (the site's ``train_local``, data loading included)
    and returns its wall time in seconds."""
    config = TrainConfig(epochs=1, learning_rate=0.01, momentum=0.0, weight_decay=0.0)

    def _epoch() -> float:
        started = time.perf_counter()
        train_local(model, loader, config=config, class_counts=class_counts, optimizer=optimizer)
        return time.perf_counter() - started

    return _epoch


def run(
    quick: bool = False, *, backbone: str | None = None, image_size: int | None = None
) -> dict[str, Any]:
    """Time plain vs DP-SGD epochs on one site's data; return the JSON-ready report.

    Args:
        quick: a smaller image size and dataset, one timed epoch each. Default False.
        backbone: timm backbone of the MUF-Net branches (default ``test_efficientnet``, a
            CPU-sized EfficientNet; ``efficientnet_b3`` is the study's).
        image_size: input size in pixels (default 64; quick 32).

    Returns:
        The suite's result dict: ``ratios`` holds ``dp_over_plain_epoch`` (the fastest
        working mode's median DP-SGD epoch over the median plain epoch) and
        ``dp_<mode>_over_plain_epoch`` per mode; ``dp`` each mode's seconds (or its error);
        ``best_mode``; ``site_mode`` (the mode the site's training uses); ``setup``.
    """
    setup = dict(_QUICK if quick else _FULL)
    setup.update(
        {k: v for k, v in (("backbone", backbone), ("image_size", image_size)) if v is not None}
    )
    threads = int(os.environ.get("OMP_NUM_THREADS", "0")) or torch.get_num_threads()
    torch.set_num_threads(threads)
    task = get_task("rcc-grading").replace(
        backbone=setup["backbone"], image_size=setup["image_size"]
    )
    with tempfile.TemporaryDirectory(prefix="dp-cost-") as tmp:
        manifest_path = generate_dual_center(
            Path(tmp),
            patients_per_site=(("bench", setup["patients"]), ("other", 4)),
            images_per_patient=(1, 2),
            image_size=setup["image_size"],
            high_grade_fraction=0.4,
            seed=0,
        )
        manifest = load_manifest(manifest_path, task, site="bench")
        class_counts = list(manifest.class_counts("train"))
        torch.manual_seed(0)
        base = create_model_for_task(task, dp_safe=True)

        def loader() -> Any:
            # decoded images stay in memory after the warm-up epoch: the timed epochs measure
            # training (augmentation included), not PNG decoding, on both sides
            return make_loader(
                manifest,
                "train",
                batch_size=setup["batch_size"],
                train=True,
                seed=0,
                cache_decoded=True,
            )

        train_rows, steps = len(manifest.rows("train")), len(loader())
        plain_model = copy.deepcopy(base)
        plain = _epoch_timer(
            plain_model,
            loader(),
            torch.optim.SGD(plain_model.parameters(), lr=0.01),
            class_counts,
        )
        timers: dict[str, Callable[[], float]] = {}
        errors: dict[str, str] = {}
        for mode in GRAD_SAMPLE_MODES:
            model = copy.deepcopy(base)
            try:
                private, optimizer, private_loader = PrivacyEngine(accountant="rdp").make_private(
                    module=model,
                    optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                    data_loader=loader(),
                    noise_multiplier=1.0,
                    max_grad_norm=1.0,
                    poisson_sampling=True,
                    grad_sample_mode=mode,
                )
                timer = _epoch_timer(private, private_loader, optimizer, class_counts)
                timer()  # warm-up (and: does this mode work on this model at all?)
            except Exception as err:  # noqa: BLE001  # a mode Opacus cannot apply here
                errors[mode] = f"{type(err).__name__}: {str(err)[:200]}"
                _log.warning("grad_sample_mode %s fails on this model: %s", mode, errors[mode])
                continue
            timers[mode] = timer
        plain()  # warm-up
        times: dict[str, list[float]] = {"non_dp": [], **{m: [] for m in timers}}
        for _ in range(setup["repeats"]):  # alternate, so that load drifts hit all alike
            times["non_dp"].append(plain())
            for mode, timer in timers.items():
                times[mode].append(timer())
    plain_median = statistics.median(times["non_dp"])
    dp: dict[str, dict[str, Any]] = {
        mode: {
            "epoch_seconds": statistics.median(times[mode]),
            "all_seconds": times[mode],
            "ratio": ratio(statistics.median(times[mode]), plain_median),
        }
        for mode in timers
    }
    dp.update({mode: {"error": reason} for mode, reason in errors.items()})
    best = min(timers, key=lambda m: dp[m]["epoch_seconds"]) if timers else None
    ratios = {f"dp_{mode}_over_plain_epoch": dp[mode]["ratio"] for mode in timers}
    if best is not None:
        ratios = {"dp_over_plain_epoch": dp[best]["ratio"], **ratios}
    return {
        "name": "dp_cost",
        "description": DESCRIPTION,
        "quick": quick,
        "ratios": ratios,
        "targets": {},  # the issue asks for the ratio, not a limit
        "best_mode": best,
        "site_mode": grad_sample_mode_for(base),  # what client.privacy.make_private picks
        "setup": {
            **setup,
            "task": task.name,
            "model": task.model,
            "dp_safe": True,
            "train_rows": train_rows,
            "steps_per_epoch": steps,
            "noise_multiplier": 1.0,
            "max_grad_norm": 1.0,
            "threads": threads,
        },
        "plain": {"epoch_seconds": plain_median, "all_seconds": times["non_dp"]},
        "dp": dp,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write ``benchmarks/results/dp_cost.json`` (or into ``--out``)."""
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("--quick", action="store_true", help="small images and data")
    parser.add_argument("--backbone", help="timm backbone (default test_efficientnet)")
    parser.add_argument("--image-size", type=int, help="input size in pixels (default 64)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", module="opacus")  # secure RNG off: fine for timing
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    result = run(quick=args.quick, backbone=args.backbone, image_size=args.image_size)
    path = write_result(result, args.out)
    modes = ", ".join(
        f"{m} {v['ratio']:.2f}x" if "ratio" in v else f"{m} failed" for m, v in result["dp"].items()
    )
    best = result["ratios"].get("dp_over_plain_epoch", float("nan"))
    print(  # noqa: T201  # the command line's report
        f"DP-SGD epoch / plain epoch: {best:.2f}x "
        f"(best mode {result['best_mode']}; {modes}); plain epoch "
        f"{result['plain']['epoch_seconds']:.2f} s -> {path}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
