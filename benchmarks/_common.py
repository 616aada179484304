"""Shared helpers of the benchmark suite: timing, peak memory, the machine, JSON out.

Every benchmark module exposes ``run(quick: bool = False) -> dict`` returning at least
``name``, ``description``, ``ratios`` (name -> float, platform over baseline unless the name
says otherwise) and ``targets`` (ratio name -> a :class:`Target` as a dict); ``main()`` runs it
from the command line and writes ``benchmarks/results/<name>.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import platform
import statistics
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

__all__ = [
    "RESULTS_DIR",
    "Timing",
    "Target",
    "time_it",
    "PeakMemory",
    "peak_memory",
    "machine",
    "write_result",
    "ratio",
    "bench_main",
]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timing:
    """Seconds per call over ``repeats`` timed calls after ``warmup`` untimed ones."""

    median: float
    minimum: float
    repeats: int
    warmup: int
    samples: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def time_it(fn: Callable[[], object], *, warmup: int = 1, repeats: int = 5) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then the median of ``repeats`` timed calls."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return Timing(
        median=statistics.median(samples),
        minimum=min(samples),
        repeats=repeats,
        warmup=warmup,
        samples=samples,
    )


@dataclass
class PeakMemory:
    """Peak memory above the level at entry, while a ``with peak_memory()`` block ran.

    ``rss_bytes`` is the process' resident set (sampled every ``interval`` seconds by a
    thread, so it sees torch and numpy buffers alike); ``traced_bytes`` is what
    :mod:`tracemalloc` saw (Python objects and NumPy arrays, not torch's allocator).
    """

    rss_bytes: int = 0
    traced_bytes: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"rss_bytes": self.rss_bytes, "traced_bytes": self.traced_bytes}


@contextmanager
def peak_memory(*, interval: float = 0.001, trace: bool = True) -> Iterator[PeakMemory]:
    """Measure the peak extra memory of the block (see :class:`PeakMemory`)."""
    gc.collect()
    process = psutil.Process()
    result = PeakMemory()
    start_rss = process.memory_info().rss
    peak = [start_rss]
    stop = threading.Event()

    def _sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            stop.wait(interval)

    sampler = threading.Thread(target=_sample, daemon=True)
    if trace:
        tracemalloc.start()
        tracemalloc.reset_peak()
        start_traced = tracemalloc.get_traced_memory()[0]
    sampler.start()
    try:
        yield result
    finally:
        peak[0] = max(peak[0], process.memory_info().rss)
        stop.set()
        sampler.join()
        if trace:
            result.traced_bytes = max(0, tracemalloc.get_traced_memory()[1] - start_traced)
            tracemalloc.stop()
        result.rss_bytes = max(0, peak[0] - start_rss)


def machine() -> dict[str, Any]:
    """What the numbers came from: CPU model, cores, memory, library versions, threads."""
    import flwr
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "os": platform.platform(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "flwr": flwr.__version__,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }


@dataclass(frozen=True)
class Target:
    """What a ratio should be: ``value <= limit`` (``at_most``) or ``>= limit``."""

    limit: float
    at_most: bool = True
    note: str = ""

    def met(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        return value <= self.limit if self.at_most else value >= self.limit

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``; NaN when the denominator is not positive."""
    return numerator / denominator if denominator > 0 else math.nan


def write_result(result: dict[str, Any], out_dir: Path = RESULTS_DIR) -> Path:
    """Write ``result`` (with the machine description added) to ``out_dir/<name>.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result.setdefault("machine", machine())
    path = out_dir / f"{result['name']}.json"
    path.write_text(json.dumps(result, indent=2, default=_jsonable) + "\n")
    return path


def _jsonable(value: object) -> object:
    if hasattr(value, "to_dict"):
        return value.to_dict()  # type: ignore[no-any-return, attr-defined]
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def bench_main(run: Callable[..., dict[str, Any]], description: str) -> None:
    """The command line of one benchmark: ``--quick`` and ``--out DIR``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a small smoke-test run")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    result = run(quick=args.quick)
    path = write_result(result, args.out)
    for name, value in result.get("ratios", {}).items():
        print(f"{result['name']}: {name} = {value:.4g}")  # noqa: T201  (command-line report)
    print(f"written {path}")  # noqa: T201
