"""Simulation scale: wall time per round and peak memory vs the number of simulated sites.

The CKD clinical task (the study's GRU on 24 clinical features, 3,393 parameters) on the UCI
CKD table split into N simulated sites (2, 10, 50; 400 patients in all), through
``simulation.runner.simulate`` with 2 CPUs: a small model, so what grows with N is the
platform's own cost (messages, site sessions, Ray actors). Reported per N: seconds per round
(the last round; the first also builds every site's session), total wall time, and the peak
resident memory of this process and all its children (Ray's processes included), sampled;
resident sizes of processes that share pages are summed, so this is an upper bound.

    python -m benchmarks.simulation_scale [--quick]
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks._common import Target, bench_main, ratio
from simulation.ckd import prepare_ckd_sites
from simulation.runner import SimulationOptions, simulate
from simulation.scenario import Scenario

__all__ = ["run", "main"]

DESCRIPTION = __doc__.splitlines()[0]
_PATIENTS = 400


def _tree_rss() -> int:
    me = psutil.Process()
    total = 0
    for process in [me, *me.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


class _TreePeak:
    """Peak summed RSS of this process tree, sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> _TreePeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _one(sites: int, rounds: int, out_dir: Path) -> dict[str, Any]:
    per_site = _PATIENTS // sites
    manifest = prepare_ckd_sites(
        out_dir / "data",
        patients_per_site=[(f"site-{i:02d}", per_site) for i in range(sites)],
        source=None,
        seed=0,
    )
    scenario = Scenario(
        name=f"scale-{sites}",
        task="ckd-risk",
        run={
            "num-server-rounds": rounds,
            "local-epochs": 1,
            "batch-size": 16,
            "learning-rate": 0.2,
            "client-threads": 1,
        },
    )
    baseline = _tree_rss()
    started = time.perf_counter()
    with _TreePeak() as peak:
        results = simulate(
            scenario, SimulationOptions(out_dir=out_dir / "run", manifest=manifest, cpus=2)
        )
    wall = time.perf_counter() - started
    (entry,) = results["runs"]
    round_seconds = [float(r["seconds"]) for r in entry["rounds"]]
    return {
        "sites": sites,
        "patients_per_site": per_site,
        "round_seconds": round_seconds,
        "seconds_per_round": round_seconds[-1],
        "wall_seconds": wall,
        "peak_rss_bytes": peak.peak,
        "rss_before_bytes": baseline,
        "final_auc": entry["final"]["global"].get("auc"),
    }


def run(quick: bool = False) -> dict:
    counts = [2, 4] if quick else [2, 10, 50]
    rounds = 2
    rows = []
    for sites in counts:
        with tempfile.TemporaryDirectory(prefix=f"fedfusion-scale-{sites}-") as tmp:
            rows.append(_one(sites, rounds, Path(tmp)))
    first, last = rows[0], rows[-1]
    growth = last["sites"] / first["sites"]
    return {
        "name": "simulation_scale",
        "description": DESCRIPTION,
        "rounds": rounds,
        "rows": rows,
        "ratios": {
            f"round_seconds_{last['sites']}_over_{first['sites']}_sites": ratio(
                last["seconds_per_round"], first["seconds_per_round"]
            ),
            f"round_seconds_per_site_{last['sites']}_over_{first['sites']}_sites": ratio(
                last["seconds_per_round"] / last["sites"],
                first["seconds_per_round"] / first["sites"],
            ),
            f"peak_rss_{last['sites']}_over_{first['sites']}_sites": ratio(
                last["peak_rss_bytes"], first["peak_rss_bytes"]
            ),
        },
        "targets": {
            f"round_seconds_per_site_{last['sites']}_over_{first['sites']}_sites": Target(
                1.0, note="per-site cost does not grow with the number of sites"
            ).to_dict(),
        },
        "site_growth": growth,
        "headline": {
            f"{r['sites']} sites": f"{r['seconds_per_round']:.2f} s/round, wall "
            f"{r['wall_seconds']:.1f} s, peak RSS {r['peak_rss_bytes'] / 2**20:,.0f} MiB"
            for r in rows
        },
    }


def main() -> None:
    bench_main(run, DESCRIPTION)


if __name__ == "__main__":
    main()
