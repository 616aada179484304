"""Helpers for the run store and dashboard tests: round records, a throwaway PostgreSQL server,
and a dashboard served on 127.0.0.1 in a background thread."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from models.metrics import ScoreSummary, summary_metrics
from strategies.history import RoundRecord, SiteFailure

__all__ = [
    "fill_store",
    "free_port",
    "make_round",
    "postgres_binaries",
    "postgres_server",
    "serve_dashboard",
]


def make_round(
    server_round: int,
    sites: Sequence[str] = ("north", "south"),
    *,
    seed: int = 0,
    skill: float = 1.0,
    failed_nodes: Sequence[int] = (),
    extra_train: dict[str, dict[str, float]] | None = None,
) -> RoundRecord:
    """A round as ClinicalFedAvg records it, from real ScoreSummary objects.

    Args:
        server_round: the round number.
        sites: the sites that answered.
        seed: seeds the synthetic scores.
        skill: how well the synthetic scores separate the classes (0 = chance).
        failed_nodes: node ids that failed to train this round.
        extra_train: further train metrics per site (e.g. privacy spend keys).
    """
    rng = np.random.default_rng(seed * 1000 + server_round)
    record = RoundRecord(round=server_round, seconds=0.5 + 0.1 * server_round)
    total = None
    for i, site in enumerate(sites):
        n = 20 + 5 * i
        y = rng.integers(0, 2, size=n)
        logits = skill * (y - 0.5) * server_round + rng.normal(size=n)
        p1 = 1.0 / (1.0 + np.exp(-logits))
        summary = ScoreSummary.from_scores(
            y, np.stack([1 - p1, p1], axis=1), n_bins=20, loss_sum=0.6 * n / server_round
        )
        record.sites[site] = {**summary_metrics(summary), "n": summary.n}
        record.train[site] = {
            "num-examples": 3 * n,
            "train-loss": 0.7 / server_round,
            "train-seconds": 1.0 + i,
            **(extra_train or {}).get(site, {}),
        }
        total = summary if total is None else total + summary
    if total is not None:
        record.global_metrics = {**summary_metrics(total), "n": total.n}
        record.global_summary = total.to_record()
    for node in failed_nodes:
        record.failures.append(SiteFailure(server_round, "train", node, "connection lost"))
    return record


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_binaries() -> Path | None:
    """The folder holding initdb and pg_ctl (Debian: /usr/lib/postgresql/N/bin), or None."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


@contextmanager
def postgres_server(bin_dir: Path) -> Iterator[str]:
    """Start a throwaway PostgreSQL cluster on 127.0.0.1; yields its base URL (no database).

    As root the cluster runs as the ``postgres`` user (PostgreSQL refuses to run as root).
    The cluster and its folder are removed afterwards.
    """
    as_root = os.geteuid() == 0
    prefix: list[str] = ["runuser", "-u", "postgres", "--"] if as_root else []
    root = Path(tempfile.mkdtemp(prefix="fedfusion-pg-"))
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    if as_root:
        shutil.chown(root, "postgres")
        shutil.chown(sockets, "postgres")
    port = free_port()
    started = False
    try:
        subprocess.run(
            [
                *prefix,
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            [
                *prefix,
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(root / "log"),
                "-w",
                "-t",
                "60",
                "start",
            ],
            check=True,
            capture_output=True,
            timeout=90,
        )
        started = True
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        if started:
            subprocess.run(
                [
                    *prefix,
                    str(bin_dir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def serve_dashboard(app: object) -> Iterator[str]:
    """Serve a FastAPI app with uvicorn on 127.0.0.1 in a thread; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, name="dashboard-under-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise RuntimeError("the dashboard did not start within 30 s")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


def fill_store(store: object, *, runs: int, rounds: int, sites: int, seed: int = 0) -> list[int]:
    """Bulk-write ``runs`` finished runs of ``rounds`` rounds x ``sites`` sites (benchmarks).

    Rows look like real ones (the same metric keys and sizes as ClinicalFedAvg records) but
    are inserted with executemany, not round by round. Returns the run ids.
    """
    from sqlalchemy import insert

    from server.store.schema import Round, Run, SiteResult, SiteStatus, utcnow
    from server.store.store import _roc_curves

    rng = np.random.default_rng(seed)
    template = make_round(1, sites=[f"site-{i:02d}" for i in range(sites)], seed=seed)
    roc_curves = _roc_curves(template.global_summary)
    site_names = list(template.sites)
    now = utcnow()
    ids: list[int] = []
    with store.engine.begin() as conn:  # type: ignore[attr-defined]
        for _ in range(runs):
            run_id = conn.execute(
                insert(Run).values(
                    name="bench",
                    task="rcc-grading",
                    model="mufnet",
                    backbone="efficientnet_b0",
                    strategy="fedavg",
                    status="finished",
                    rounds_planned=rounds,
                    rounds_done=rounds,
                    best_auc=0.8,
                    last_auc=0.8,
                    classes=["low", "high"],
                    config={"num-server-rounds": rounds},
                    out_dir="",
                    started_at=now,
                    updated_at=now,
                    ended_at=now,
                )
            ).inserted_primary_key[0]
            ids.append(int(run_id))
            jitter = rng.normal(scale=0.01, size=rounds)
            conn.execute(
                insert(Round),
                [
                    {
                        "run_id": run_id,
                        "round": r + 1,
                        "global_metrics": {
                            **_clean(template.global_metrics),
                            "auc": 0.6 + 0.002 * r + float(jitter[r]),
                        },
                        "summary": template.global_summary,
                        "roc": roc_curves,
                        "seconds": 1.0,
                        "sites_ok": sites,
                        "sites_failed": 0,
                        "finished_at": now,
                    }
                    for r in range(rounds)
                ],
            )
            conn.execute(
                insert(SiteResult),
                [
                    {
                        "run_id": run_id,
                        "round": r + 1,
                        "site": site,
                        "evaluate": _clean(template.sites[site]),
                        "train": template.train[site],
                        "error": None,
                    }
                    for r in range(rounds)
                    for site in site_names
                ],
            )
            conn.execute(
                insert(SiteStatus),
                [
                    {
                        "run_id": run_id,
                        "site": site,
                        "train_examples": 100,
                        "eval_examples": 20,
                        "rounds_ok": rounds,
                        "failures": 0,
                        "last_round": rounds,
                        "last_seconds": 1.0,
                        "total_seconds": rounds,
                        "timed_rounds": rounds,
                        "last_seen": now,
                    }
                    for site in site_names
                ],
            )
    return ids


def _clean(metrics: dict[str, object]) -> dict[str, object]:
    from server.store.store import _json_safe

    return _json_safe(metrics)
