"""The run store against SQLite and a real PostgreSQL server started for these tests."""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from models.metrics import ScoreSummary, summary_metrics
from server.store import RunRecorder, RunStore, RunStoreError, redact_url, store_url
from tests.server._runs import make_round, postgres_binaries, postgres_server

BACKENDS = ["sqlite", "postgresql"]


def _postgres_skip_reason() -> str | None:
    bin_dir = postgres_binaries()
    if bin_dir is None:
        return (
            "PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin; "
            "`apt-get install postgresql`)"
        )
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "running as root and `runuser` is missing: cannot start PostgreSQL as non-root"
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` user to run PostgreSQL as"
    return None


@pytest.fixture(scope="session")
def postgres_base_url() -> Iterator[str]:
    reason = _postgres_skip_reason()
    if reason:
        pytest.skip(reason)
    bin_dir = postgres_binaries()
    assert bin_dir is not None
    with postgres_server(bin_dir) as url:
        yield url


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database URL on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runs.sqlite'}"
    import psycopg

    base = request.getfixturevalue("postgres_base_url")
    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(base.replace("+psycopg", "") + "/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{base}/{name}"


@pytest.fixture
def store(db_url: str) -> Iterator[RunStore]:
    with RunStore(db_url) as opened:
        yield opened


def _start(store: RunStore, **overrides: object) -> int:
    fields: dict[str, object] = {
        "name": "dual-center/fedavg",
        "task": "rcc-grading",
        "model": "mufnet",
        "backbone": "efficientnet_b0",
        "strategy": "fedavg",
        "rounds_planned": 3,
        "classes": ("low", "high"),
        "config": {"num-server-rounds": 3, "db-url": "postgresql://coord:s3cret@db/runs"},
    }
    fields.update(overrides)
    return store.start_run(**fields)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- runs and rounds


def test_a_run_is_listed_while_running_and_after(store: RunStore) -> None:
    run_id = _start(store)
    (run,) = store.list_runs()
    assert run["id"] == run_id and run["status"] == "running"
    assert (run["rounds_done"], run["rounds_planned"], run["best_auc"]) == (0, 3, None)
    assert run["started_at"].endswith("Z") and run["ended_at"] is None
    detail = store.get_run(run_id)
    assert detail["classes"] == ["low", "high"]
    assert detail["config"]["db-url"] == "postgresql://coord:***@db/runs"  # never the password

    store.finish_run(run_id)
    (run,) = store.list_runs()
    assert run["status"] == "finished" and run["ended_at"] is not None
    assert [e["kind"] for e in store.events(run_id)] == ["run-finished", "run-started"]


def test_rounds_hold_global_and_per_site_results(store: RunStore) -> None:
    run_id = _start(store)
    first, second = make_round(1), make_round(2, failed_nodes=[77])
    store.record_round(run_id, first)
    store.record_round(run_id, second)

    rounds = store.rounds(run_id)
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[0]["global"]["auc"] == pytest.approx(first.global_metrics["auc"])
    assert set(rounds[1]["sites"]) == {"north", "south"}
    assert rounds[1]["train"]["south"]["num-examples"] == second.train["south"]["num-examples"]
    assert rounds[1]["errors"] == {"node 77": "train: connection lost"}
    assert [r["round"] for r in store.rounds(run_id, after=1)] == [2]

    (run,) = store.list_runs()
    aucs = [first.global_metrics["auc"], second.global_metrics["auc"]]
    assert run["rounds_done"] == 2
    assert run["best_auc"] == pytest.approx(max(aucs))
    assert run["last_auc"] == pytest.approx(aucs[1])


def test_sites_panel_counts_examples_durations_and_failures(store: RunStore) -> None:
    run_id = _start(store)
    store.record_round(run_id, make_round(1, failed_nodes=[77]))
    store.record_round(run_id, make_round(2, failed_nodes=[77]))
    sites = {s["site"]: s for s in store.sites(run_id)}
    assert set(sites) == {"north", "south", "node 77"}
    south = sites["south"]
    assert (south["train_examples"], south["eval_examples"]) == (75, 25)
    assert (south["rounds_ok"], south["failures"], south["last_round"]) == (2, 0, 2)
    assert south["last_seconds"] == pytest.approx(2.0) and south["mean_seconds"] == 2.0
    assert south["last_seen"] is not None and south["privacy"] is None
    failed = sites["node 77"]
    assert (failed["rounds_ok"], failed["failures"]) == (0, 2)
    assert failed["last_error"] == "train: connection lost" and failed["last_seen"] is None
    kinds = [e["kind"] for e in store.events(run_id)]
    assert kinds.count("site-failure") == 2


def test_writing_a_round_again_replaces_it(store: RunStore) -> None:
    """A resumed run may repeat a round: nothing is counted twice."""
    run_id = _start(store)
    spend = {"north": {"dp-epsilon-spent": 0.4, "dp-epsilon-budget": 2.0}}
    store.record_round(run_id, make_round(1, failed_nodes=[9], extra_train=spend))
    store.record_round(run_id, make_round(1, failed_nodes=[9], extra_train=spend))
    assert len(store.rounds(run_id)) == 1
    sites = {s["site"]: s for s in store.sites(run_id)}
    assert sites["north"]["rounds_ok"] == 1 and sites["node 9"]["failures"] == 1
    assert [e["kind"] for e in store.events(run_id)].count("site-failure") == 1


def test_undefined_metrics_are_stored_as_null(store: RunStore) -> None:
    """NaN (a site with one class has no AUC) must not break PostgreSQL's JSON."""
    run_id = _start(store)
    record = make_round(1)
    record.sites["north"]["auc"] = float("nan")
    record.global_metrics["ppv"] = float("inf")
    store.record_round(run_id, record)
    (stored,) = store.rounds(run_id)
    assert stored["sites"]["north"]["auc"] is None and stored["global"]["ppv"] is None


def test_roc_is_built_from_the_shared_histograms(store: RunStore) -> None:
    run_id = _start(store)
    assert store.roc(run_id) is None
    record = make_round(2)
    store.record_round(run_id, record)
    roc = store.roc(run_id)
    assert roc is not None and roc["round"] == 2 and roc["classes"] == ["low", "high"]
    (curve,) = roc["curves"]
    assert curve["positive"] == 1 and len(curve["fpr"]) == len(curve["tpr"]) == 21
    summary = ScoreSummary.from_record(record.global_summary)
    assert curve["auc"] == pytest.approx(summary_metrics(summary)["auc"], abs=1e-9)
    assert roc["confusion"] == record.global_metrics["confusion"]
    stored_round, stored_summary = store.round_summary(run_id)  # type: ignore[misc]
    assert stored_round == 2 and ScoreSummary.from_record(stored_summary) == summary


def test_roc_comes_from_the_last_round_that_was_evaluated(store: RunStore) -> None:
    run_id = _start(store)
    store.record_round(run_id, make_round(1))
    store.record_round(run_id, make_round(2, sites=(), failed_nodes=[1, 2]))  # nobody answered
    roc = store.roc(run_id)
    assert roc is not None and roc["round"] == 1
    assert store.roc(run_id, 2) is None
    (run,) = store.list_runs()
    assert run["rounds_done"] == 2 and run["last_auc"] is None and run["best_auc"] is not None


# --------------------------------------------------------------------------- privacy, checkpoints


def test_privacy_spend_from_train_metrics_and_explicit(store: RunStore) -> None:
    run_id = _start(store)
    spend = {"north": {"dp-epsilon-spent": 1.2, "dp-epsilon-budget": 4.0, "dp-delta": 1e-5}}
    store.record_round(run_id, make_round(1, extra_train=spend))
    store.record_privacy(run_id, "south", epsilon=0.5, budget=1.0, round=1)
    store.record_privacy(run_id, "south", epsilon=0.95, budget=1.0, round=2)
    privacy = {s["site"]: s["privacy"] for s in store.sites(run_id)}
    assert privacy["north"]["epsilon"] == pytest.approx(1.2)
    assert privacy["north"]["budget"] == pytest.approx(4.0)
    assert privacy["north"]["delta"] == pytest.approx(1e-5)
    assert privacy["south"]["epsilon"] == pytest.approx(0.95)  # the latest report
    with pytest.raises(RunStoreError, match=r"epsilon must be a finite number >= 0, got -1"):
        store.record_privacy(run_id, "south", epsilon=-1, budget=0)


def test_checkpoints_record_size_and_digest(store: RunStore, tmp_path: Path) -> None:
    run_id = _start(store)
    path = tmp_path / "round-001.pt"
    path.write_bytes(b"weights" * 100)
    store.add_checkpoint(run_id, 1, path)
    (row,) = store.checkpoints(run_id)
    assert row["round"] == 1 and row["path"] == str(path.resolve())
    assert row["size_bytes"] == 700 and len(row["sha256"]) == 64
    assert store.checkpoint(run_id, 1) == row and store.checkpoint(run_id, 2) is None


def test_unknown_runs_and_bad_statuses_are_named(store: RunStore) -> None:
    with pytest.raises(RunStoreError, match="no run with id 999"):
        store.get_run(999)
    with pytest.raises(RunStoreError, match="no run with id 999"):
        store.record_round(999, make_round(1))
    run_id = _start(store)
    with pytest.raises(RunStoreError, match="status must be 'finished' or 'failed', got 'done'"):
        store.finish_run(run_id, status="done")


def test_several_runs_newest_first(store: RunStore) -> None:
    ids = [_start(store, name=f"run {i}") for i in range(3)]
    assert [r["id"] for r in store.list_runs()] == ids[::-1]
    assert [r["id"] for r in store.list_runs(limit=2)] == ids[:0:-1]
    assert store.latest_run_id() == ids[-1]


# --------------------------------------------------------------------------- the recorder


def test_recorder_writes_rounds_checkpoints_and_status(db_url: str, tmp_path: Path) -> None:
    recorder = RunRecorder.start(
        db_url,
        name="r",
        task="rcc-grading",
        model="mufnet",
        strategy="fedavg",
        rounds_planned=2,
        out_dir=str(tmp_path / "out"),
    )
    assert recorder.checkpoint_dir == (tmp_path / "out" / "checkpoints" / f"run-{recorder.run_id}")
    for server_round in (1, 2):
        recorder.on_round_end(make_round(server_round))
        recorder.save_checkpoint(server_round, {"w": torch.full((3,), float(server_round))})
    recorder.save_checkpoint(0, {"w": torch.zeros(3)})  # the initial model is not kept
    recorder.close()
    with RunStore(db_url, create=False) as store:
        (run,) = store.list_runs()
        assert run["status"] == "finished" and run["rounds_done"] == 2
        checkpoints = store.checkpoints(run["id"])
    assert [c["round"] for c in checkpoints] == [1, 2]
    loaded = torch.load(checkpoints[1]["path"], weights_only=True)  # a plain tensor dict
    assert list(loaded) == ["w"] and type(loaded["w"]) is torch.Tensor
    assert torch.equal(loaded["w"], torch.full((3,), 2.0))


def test_a_failing_store_write_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = RunRecorder.start(
        tmp_path / "runs.sqlite", task="t", model="m", strategy="fedavg", rounds_planned=1
    )
    bad = make_round(1)
    bad.global_metrics["auc"] = object()  # not JSON: the write fails in the worker
    with caplog.at_level(logging.WARNING, logger="server.store.recorder"):
        recorder.on_round_end(bad)
        recorder.close(status="failed", error="RuntimeError: boom")
    assert "could not write round 1" in caplog.text
    with RunStore(tmp_path / "runs.sqlite", create=False) as store:
        (run,) = store.list_runs()
    assert run["status"] == "failed"


# --------------------------------------------------------------------------- URLs


URLS = [
    ("sqlite:///x.sqlite", "sqlite:///x.sqlite"),
    ("postgresql://u:pw@h:5432/db", "postgresql+psycopg://u:pw@h:5432/db"),
    ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
]


@pytest.mark.parametrize(("given", "expected"), URLS)
def test_store_url(given: str, expected: str) -> None:
    assert store_url(given) == expected


def test_paths_become_absolute_sqlite_urls(tmp_path: Path) -> None:
    assert store_url(tmp_path / "a" / "runs.sqlite") == f"sqlite:///{tmp_path}/a/runs.sqlite"
    assert redact_url("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"
    with pytest.raises(RunStoreError, match="expected a SQLAlchemy URL or a SQLite file path"):
        store_url(" ")


REDACTED = [
    ("runs.sqlite", "runs.sqlite"),  # a plain path is shown as a path
    ("/srv/fedfusion/runs.sqlite", "/srv/fedfusion/runs.sqlite"),
    ("~/runs db/r.sqlite", "~/runs db/r.sqlite"),
    ("sqlite:////srv/runs.sqlite", "sqlite:////srv/runs.sqlite"),
    ("postgresql://user:s3cret@host/db", "postgresql://user:***@host/db"),
    ("postgresql+psycopg://fed:p%40ss@db:5432/runs?sslmode=require",
     "postgresql+psycopg://fed:***@db:5432/runs?sslmode=require"),
    ("postgresql://user@host/db", "postgresql://user@host/db"),  # no password to hide
    ("postgresql://user:p@ss/w?rd@host/db", "postgresql://user:***@host/db"),  # unescaped
    ("postgresql://user:s3cret@host:port/db", "postgresql://user:***@host:port/db"),  # bad port
    ("postgresql://host/db?sslmode=require&password=s3cret",
     "postgresql://host/db?sslmode=require&password=***"),
    ("postgresql://user:***@host/db", "postgresql://user:***@host/db"),  # already redacted
]  # fmt: skip


@pytest.mark.parametrize(("given", "shown"), REDACTED)
def test_redact_url_shows_paths_and_hides_passwords(given: str, shown: str) -> None:
    assert redact_url(given) == shown
    assert "s3cret" not in shown and "p@ss" not in redact_url(given)
    assert redact_url(shown) == shown


def test_a_stored_db_url_is_shown_as_given_with_the_password_masked(store: RunStore) -> None:
    path_run = _start(store, config={"db-url": "/srv/fedfusion/runs.sqlite"})
    url_run = _start(store)  # postgresql://coord:s3cret@db/runs
    assert store.get_run(path_run)["config"]["db-url"] == "/srv/fedfusion/runs.sqlite"
    assert store.get_run(url_run)["config"]["db-url"] == "postgresql://coord:***@db/runs"
    assert "<invalid url>" not in str(store.list_runs())


def test_a_missing_store_is_an_error_when_not_creating(tmp_path: Path) -> None:
    with pytest.raises(RunStoreError, match=r"no SQLite file at .*nothing\.sqlite"):
        RunStore(tmp_path / "nothing.sqlite", create=False)
    assert not (tmp_path / "nothing.sqlite").exists()


def test_an_unreachable_server_is_named(postgres_base_url: str) -> None:
    dead = postgres_base_url.rsplit(":", 1)[0] + ":1/runs"
    with pytest.raises(RunStoreError, match=r"cannot open postgresql\+psycopg://postgres@"):
        RunStore(dead)
