"""Run the whole benchmark suite: one JSON per benchmark and ``SUMMARY.md``.

Each benchmark runs in its own Python process (so one's peak memory, Ray workers or torch
thread settings do not leak into the next); a benchmark that fails or is missing gets an
entry saying so and the suite goes on.

    python -m benchmarks.run_all                # the full suite (make bench)
    python -m benchmarks.run_all --quick        # a smoke test (tests/benchmarks)
    python -m benchmarks.run_all --only aggregation --out /tmp/bench
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._common import RESULTS_DIR, Target, machine, write_result

__all__ = ["BENCHMARKS", "run_one", "run_suite", "write_summary"]

# name -> module; the order of the summary.
BENCHMARKS: dict[str, str] = {
    "platform_overhead": "benchmarks.platform_overhead",
    "aggregation": "benchmarks.aggregation",
    "communication": "benchmarks.communication",
    "data_path": "benchmarks.data_path",
    "dp_cost": "benchmarks.dp_cost",
    "simulation_scale": "benchmarks.simulation_scale",
}
_ROOT = Path(__file__).resolve().parent.parent


def run_one(name: str, *, quick: bool, out_dir: Path) -> Path:
    """Run benchmark ``name`` in this process and write its JSON; returns the path."""
    module_name = BENCHMARKS[name]
    if importlib.util.find_spec(module_name) is None:
        return write_result(_missing(name, f"{module_name} is not in this tree"), out_dir)
    module = importlib.import_module(module_name)
    started = time.perf_counter()
    result = module.run(quick=quick)
    result.setdefault("name", name)
    result["name"] = name  # the file name follows the suite's name for it
    result["quick"] = quick
    result["benchmark_seconds"] = time.perf_counter() - started
    return write_result(result, out_dir)


def _missing(name: str, reason: str, *, status: str = "missing") -> dict[str, Any]:
    return {"name": name, "status": status, "reason": reason, "ratios": {}, "targets": {}}


def run_suite(
    names: list[str], *, quick: bool, out_dir: Path, timeout: float | None = None
) -> list[dict[str, Any]]:
    """Run each benchmark in a child process; returns the results read back from JSON."""
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    env.setdefault("OMP_NUM_THREADS", "1")
    results = []
    for name in names:
        path = out_dir / f"{name}.json"
        path.unlink(missing_ok=True)
        command = [
            sys.executable,
            "-m",
            "benchmarks.run_all",
            "--only",
            name,
            "--out",
            str(out_dir),
        ]
        if quick:
            command.append("--quick")
        started = time.perf_counter()
        logging.getLogger(__name__).warning("benchmark %s ...", name)
        try:
            done = subprocess.run(
                command, cwd=_ROOT, env=env, capture_output=True, text=True, timeout=timeout
            )
            error = None if done.returncode == 0 else done.stderr[-4000:]
        except subprocess.TimeoutExpired:
            error = f"timed out after {timeout} s"
        if error is not None or not path.is_file():
            write_result(_missing(name, error or "wrote no result", status="failed"), out_dir)
        result = json.loads(path.read_text())
        result.setdefault("benchmark_seconds", time.perf_counter() - started)
        results.append(result)
    write_summary(results, out_dir, quick=quick)
    return results


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def write_summary(results: list[dict[str, Any]], out_dir: Path, *, quick: bool) -> Path:
    """``SUMMARY.md``: every ratio with its target, then each benchmark's headline numbers."""
    lines = [
        "# Benchmark summary" + (" (quick smoke run: not representative)" if quick else ""),
        "",
        f"Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by "
        "`python -m benchmarks.run_all`.",
        "",
        "| benchmark | ratio | value | target | met |",
        "|---|---|---|---|---|",
    ]
    for result in results:
        if result.get("status") in ("missing", "failed"):
            reason = str(result.get("reason", "")).strip().splitlines()
            lines.append(
                f"| {result['name']} | {result['status']} | - | - | {(reason or [''])[-1][:120]} |"
            )
            continue
        targets = result.get("targets", {})
        for key, value in result.get("ratios", {}).items():
            target = Target(**targets[key]) if key in targets else None
            shown = "-"
            met = "-"
            if target is not None:
                shown = f"{'<=' if target.at_most else '>='} {target.limit:g}"
                met = "yes" if target.met(float(value)) else "**no**"
            lines.append(f"| {result['name']} | {key} | {_fmt(value)} | {shown} | {met} |")
    lines += ["", "## Details", ""]
    for result in results:
        lines.append(f"### {result['name']}")
        lines.append("")
        if result.get("description"):
            lines += [str(result["description"]), ""]
        for key, value in result.get("headline", {}).items():
            lines.append(f"- {key}: {_fmt(value)}")
        lines.append(f"- benchmark seconds: {_fmt(float(result.get('benchmark_seconds', 0.0)))}")
        lines.append("")
    described = machine()
    lines += ["## Machine", ""] + [f"- {k}: {v}" for k, v in described.items()] + [""]
    path = out_dir / "SUMMARY.md"
    path.write_text("\n".join(lines))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke-test sizes")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--only", choices=sorted(BENCHMARKS), action="append")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per benchmark")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.only and len(args.only) == 1 and os.environ.get("_FEDFUSION_BENCH_CHILD"):
        run_one(args.only[0], quick=args.quick, out_dir=args.out)
        return
    names = args.only or list(BENCHMARKS)
    os.environ["_FEDFUSION_BENCH_CHILD"] = "1"
    started = time.perf_counter()
    results = run_suite(names, quick=args.quick, out_dir=args.out, timeout=args.timeout)
    for result in results:
        ratios = ", ".join(f"{k} {_fmt(v)}" for k, v in result.get("ratios", {}).items())
        print(f"{result['name']}: {result.get('status', 'ok')} {ratios}")  # noqa: T201
    print(f"suite: {time.perf_counter() - started:.0f} s; {args.out / 'SUMMARY.md'}")  # noqa: T201


if __name__ == "__main__":
    main()
