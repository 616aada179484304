"""Resume and k-of-n rounds of the real ServerApp code over an in-process grid (issue 8), and
the resume point's file format: tensors + JSON, nothing unpickled (issue 15).

The federated runs use the real ClientApp functions on the UCI CKD table split into three
simulated sites (skipped when the table is absent; set FEDFUSION_CKD_CSV).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from server.app import run_federation
from server.resume import (
    RESUME_FILE,
    ResumeError,
    ResumePoint,
    find_resume_point,
    load_resume_point,
    save_resume_point,
)
from server.resume_cli import resume_command
from server.store import RunStore
from simulation.ckd import prepare_ckd_sites, resolve_ckd_source
from tests.server._grid import LocalGrid, ServerCrash

SITES = ("clinic-a", "clinic-b", "clinic-c")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        resolve_ckd_source()
    except FileNotFoundError as err:  # pragma: no cover - depends on the machine
        pytest.skip(f"UCI CKD table absent: {err}")
    folder = tmp_path_factory.mktemp("ckd")
    return prepare_ckd_sites(
        folder, patients_per_site=dict(zip(SITES, (50, 40, 40), strict=True)), seed=2
    )


def _config(out: Path, **extra: object) -> dict[str, object]:
    return {
        "task": "ckd-risk",  # the GRU with dropout: needs seeded site training to repeat
        "num-server-rounds": 4,
        "local-epochs": 1,
        "batch-size": 16,
        "learning-rate": 0.2,
        "strategy": "fedadam",  # server-optimiser moments must survive the restart
        "server-lr": 0.05,
        "min-train-nodes": 3,
        "min-available-nodes": 3,
        "score-bins": 10,
        "seed": 3,
        "out-dir": str(out),
        "db-url": str(out.parent / "runs.sqlite"),
        **extra,
    }


@pytest.mark.slow
def test_a_resumed_run_ends_with_the_uninterrupted_model(manifest: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    whole = run_federation(LocalGrid(manifest, SITES), _config(tmp_path / "whole"))

    out = tmp_path / "crashed"
    with pytest.raises(ServerCrash):
        run_federation(LocalGrid(manifest, SITES, crash_before_round=3), _config(out))
    point = load_resume_point(out / RESUME_FILE)
    assert point.round == 2 and set(point.strategy["arrays"]) == {"m_t", "v_t"}
    store = RunStore(tmp_path / "runs.sqlite")
    run_id = point.run_id
    assert store.get_run(run_id)["status"] == "failed"

    grid = LocalGrid(manifest, SITES)
    resumed = run_federation(grid, _config(out, **{"resume-run": str(out)}))
    assert {r for r, _, _ in grid.sent} == {3, 4}  # rounds 1-2 are not repeated
    assert [r.round for r in resumed.history.rounds] == [1, 2, 3, 4]
    for key, value in whole.final_state.items():
        torch.testing.assert_close(resumed.final_state[key], value, rtol=1e-5, atol=1e-6)
    history = json.loads((out / "history.json").read_text())
    assert [r["round"] for r in history["rounds"]] == [1, 2, 3, 4]
    audit = [json.loads(x)["round"] for x in (out / "audit.jsonl").read_text().splitlines()]
    assert audit == [1, 2, 3, 4]
    run = store.get_run(run_id)  # the same run-store entry, finished
    assert run["status"] == "finished" and run["rounds_done"] == 4
    assert "run-resumed" in [e["kind"] for e in store.events(run_id)]
    assert len(store.list_runs()) == 2  # the uninterrupted run and this one
    store.close()

    with pytest.raises(ResumeError, match="num-server-rounds was 4, now 5"):
        run_federation(
            LocalGrid(manifest, SITES),
            _config(out, **{"resume-run": str(out), "num-server-rounds": 5}),
        )
    with pytest.raises(ResumeError, match="no resume.json"):
        run_federation(
            LocalGrid(manifest, SITES), _config(out, **{"resume-run": str(tmp_path / "none")})
        )


@pytest.mark.slow
def test_a_round_completes_with_the_sites_that_answer(manifest: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "kofn"
    grid = LocalGrid(manifest, SITES, silent={103: 2})  # clinic-c drops out after round 1
    config = _config(out, **{"num-server-rounds": 2, "min-answers": 2, "strategy": "fedavg"})
    result = run_federation(grid, config)
    second = result.history.rounds[1]
    assert sorted(second.train) == ["clinic-a", "clinic-b"] and not second.note
    failed = {(f.stage, f.site) for f in second.failures}
    assert failed == {("train", "clinic-c"), ("evaluate", "clinic-c")}
    audit = [json.loads(x) for x in (out / "audit.jsonl").read_text().splitlines()]
    assert audit[1]["missing"] == [103] and sorted(audit[1]["used"]) == ["clinic-a", "clinic-b"]
    with RunStore(tmp_path / "runs.sqlite") as store:
        sites = {s["site"]: s for s in store.sites(store.latest_run_id())}
    assert sites["clinic-c"]["failures"] == 1 and sites["clinic-a"]["failures"] == 0

    # Fewer answers than min-answers: the round keeps the previous global model.
    strict = _config(tmp_path / "strict", **{"num-server-rounds": 2, "min-answers": 3})
    result = run_federation(LocalGrid(manifest, SITES, silent={103: 2}), strict)
    assert "min-answers 3" in result.history.rounds[1].note


def test_server_resume_submits_the_saved_config(tmp_path: Path) -> None:
    from server.resume import ResumePoint, save_resume_point
    from simulation.cli import main

    config = {"task": "ckd-risk", "num-server-rounds": 4, "learning-rate": 0.2,
              "class-balanced-sampling": True, "out-dir": str(tmp_path),
              "db-url": "postgresql+psycopg://fed:***@db/runs", "resume-run": ""}  # fmt: skip
    path = save_resume_point(tmp_path, ResumePoint(2, {"w": torch.zeros(2)}, {}, config))
    command = resume_command(str(tmp_path), app="app", connection="net", extra="db-url='x'")
    assert command[:4] == ["flwr", "run", "app", "net"] and command[-1] == "--stream"
    text = command[5]
    assert 'task="ckd-risk"' in text and "num-server-rounds=4" in text
    assert "class-balanced-sampling=true" in text and "***" not in text
    assert text.endswith(f"resume-run=\"{path.resolve()}\" db-url='x'")
    assert main(["server", "resume", str(tmp_path), "--dry-run"]) == 0
    assert main(["server", "resume", str(tmp_path / "nothing"), "--dry-run"]) == 2


@pytest.mark.parametrize("prefer_flower", [True, False])
def test_central_dp_accounting_continues_after_a_resume(prefer_flower: bool) -> None:
    from strategies.central_dp import CentralDPAccountant

    def accountant() -> CentralDPAccountant:
        return CentralDPAccountant(
            noise_multiplier=1.1, num_sites=3, delta=1e-5, prefer_flower=prefer_flower
        )

    crashed, whole = accountant(), accountant()
    for server_round in (1, 2):
        crashed.record(server_round, released=True)
    for server_round in (1, 2, 3):
        whole.record(server_round, released=True)
    resumed = accountant()
    resumed.restore(crashed.state())  # what the resume point carries
    assert resumed.epsilon == pytest.approx(crashed.epsilon) and resumed.epsilon > 0
    resumed.record(3, released=True)
    assert resumed.epsilon == pytest.approx(whole.epsilon)
    assert [r["round"] for r in resumed.rounds] == [1, 2, 3]


# --------------------------------------------------------------------------- file format

FEDFUSION = Path(sys.executable).with_name("fedfusion")


class _Touch:
    """Unpickling this runs code: it creates ``marker`` (a stand-in for anything worse)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch '{self.marker}'",)


def _crafted(kind: str, marker: Path) -> bytes:
    """A file whose unpickling would create ``marker``: a bare pickle, or a torch.save zip."""
    if kind == "pickle":
        return pickle.dumps({"format": 1, "round": 2, "boom": _Touch(marker)})
    path = marker.with_name("crafted.pt")
    torch.save({"format": 1, "round": 2, "arrays": {}, "boom": _Touch(marker)}, path)
    return path.read_bytes()


def _point(**extra: object) -> ResumePoint:
    strategy = {
        "history": [{"round": 1, "global_metrics": {"auc": 0.75, "loss": float("nan")}}],
        "arrays": {  # FedAdam/FedYogi moments, as strategy_state() returns them
            "m_t": {"fc.weight": np.full((2, 3), 0.5, np.float32), "fc.bias": np.zeros(2)},
            "v_t": {"fc.weight": np.ones((2, 3), np.float32), "fc.bias": np.array(1e-9)},
        },
        "site-names": {101: "clinic-a", 102: "clinic-b"},
    }
    central_dp = {"releases": 2, "rounds": [{"round": 1, "epsilon": 0.4, "released": True}]}
    return ResumePoint(
        round=2,
        arrays={"fc.weight": torch.arange(6.0).reshape(2, 3), "fc.bias": torch.tensor([1.0, 2.0]),
                "bn.num_batches_tracked": torch.tensor(7)},
        strategy=strategy,
        config={"task": "ckd-risk", "num-server-rounds": 4, "seed": 3, "resume-run": ""},
        run_id=5,
        extra={"central-dp": central_dp, **extra},
    )  # fmt: skip


def test_a_resume_point_round_trips_with_strategy_arrays(tmp_path: Path) -> None:
    point = _point(trace=(torch.ones(2, dtype=torch.float16), 3))
    path = save_resume_point(tmp_path, point)
    assert path == tmp_path / RESUME_FILE
    (tensors,) = tmp_path.glob("resume-tensors-*.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([RESUME_FILE, tensors.name])
    flat = torch.load(tensors, weights_only=True)  # a plain dict[str, Tensor]
    assert all(isinstance(k, str) and type(v) is torch.Tensor for k, v in flat.items())
    assert len(flat) == 3 + 4 + 1

    loaded = load_resume_point(path)
    assert (loaded.round, loaded.run_id, loaded.config) == (2, 5, point.config)
    assert list(loaded.arrays) == list(point.arrays)
    for key, value in point.arrays.items():
        assert loaded.arrays[key].dtype == value.dtype
        torch.testing.assert_close(loaded.arrays[key], value)
    for moment in ("m_t", "v_t"):
        for key, value in point.strategy["arrays"][moment].items():
            got = loaded.strategy["arrays"][moment][key]
            assert isinstance(got, np.ndarray) and got.dtype == value.dtype
            np.testing.assert_array_equal(got, value)
    assert loaded.strategy["site-names"] == {101: "clinic-a", 102: "clinic-b"}
    history = loaded.strategy["history"][0]
    assert history["global_metrics"]["auc"] == 0.75 and np.isnan(history["global_metrics"]["loss"])
    assert loaded.extra["central-dp"] == point.extra["central-dp"]
    trace, three = loaded.extra["trace"]
    assert three == 3 and trace.dtype == torch.float16 and trace.tolist() == [1.0, 1.0]

    # The next save replaces the pair and removes the old tensors file.
    save_resume_point(tmp_path, ResumePoint(3, {"w": torch.ones(1)}, {}, {}))
    assert load_resume_point(path).round == 3
    assert len(list(tmp_path.glob("resume-tensors-*"))) == 1


def test_a_strategy_with_its_state_resumes_from_the_file(tmp_path: Path) -> None:
    from strategies.fedadam import ClinicalFedAdam

    def strategy() -> ClinicalFedAdam:
        return ClinicalFedAdam(eta=0.05)

    saved = strategy()
    saved.m_t = {"w": np.full(3, 0.25, np.float32)}
    saved.v_t = {"w": np.full(3, 0.5, np.float32)}
    saved.history.round(1).global_metrics["auc"] = 0.8
    save_resume_point(tmp_path, ResumePoint(1, {"w": torch.zeros(3)}, saved.strategy_state(), {}))
    resumed = strategy()
    resumed.load_strategy_state(load_resume_point(tmp_path / RESUME_FILE).strategy)
    np.testing.assert_array_equal(resumed.m_t["w"], saved.m_t["w"])
    np.testing.assert_array_equal(resumed.v_t["w"], saved.v_t["w"])
    assert resumed.history.rounds[0].global_metrics == {"auc": 0.8}


def test_values_that_are_neither_json_nor_arrays_are_refused_on_save(tmp_path: Path) -> None:
    with pytest.raises(ResumeError, match=r"strategy\['when'\] is a object"):
        save_resume_point(tmp_path, ResumePoint(1, {}, {"when": object()}, {}))
    with pytest.raises(ResumeError, match=r"config\['w'\] is an array"):
        save_resume_point(tmp_path, ResumePoint(1, {}, {}, {"w": np.zeros(2)}))
    assert not (tmp_path / RESUME_FILE).exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch, on the bare pickle
@pytest.mark.parametrize("kind", ["pickle", "torch-zip"])
def test_a_crafted_pickle_is_never_unpickled(kind: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    crafted = _crafted(kind, marker)
    probe = tmp_path / "probe.pt"
    probe.write_bytes(crafted)
    with contextlib.suppress(RuntimeError):  # a bare pickle is no torch file, but ...
        torch.load(probe, weights_only=False)
    assert marker.exists()  # ... the file is real: unpickling it runs its code
    marker.unlink()

    # As the resume file itself, and as an old resume.pt that an out-dir holds.
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / RESUME_FILE).write_bytes(crafted)
    with pytest.raises(ResumeError, match="refusing to unpickle it"):
        load_resume_point(tmp_path / "new" / RESUME_FILE)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "resume.pt").write_bytes(crafted)
    with pytest.raises(ResumeError, match="refusing to unpickle it .*format 1"):
        find_resume_point(str(tmp_path / "old"))
    with pytest.raises(ResumeError, match="refusing to unpickle it"):
        load_resume_point(tmp_path / "old" / "resume.pt")

    # As the tensors file of a resume.json that names it with the right hash.
    save_resume_point(tmp_path / "pair", _point())
    (tensors,) = (tmp_path / "pair").glob("resume-tensors-*.pt")
    tensors.write_bytes(crafted)
    document = json.loads((tmp_path / "pair" / RESUME_FILE).read_text())
    document["tensors"]["sha256"] = hashlib.sha256(crafted).hexdigest()
    (tmp_path / "pair" / RESUME_FILE).write_text(json.dumps(document))
    with pytest.raises(ResumeError, match="not a tensors-only file: refusing to unpickle it"):
        load_resume_point(tmp_path / "pair" / RESUME_FILE)
    assert not marker.exists()


def test_a_tensors_file_of_another_save_is_refused(tmp_path: Path) -> None:
    save_resume_point(tmp_path / "a", _point())
    save_resume_point(tmp_path / "b", ResumePoint(9, {"w": torch.ones(2)}, {}, {}))
    (theirs,) = (tmp_path / "b").glob("resume-tensors-*.pt")
    (ours,) = (tmp_path / "a").glob("resume-tensors-*.pt")
    ours.write_bytes(theirs.read_bytes())
    with pytest.raises(ResumeError, match="does not match"):
        load_resume_point(tmp_path / "a" / RESUME_FILE)
    document = json.loads((tmp_path / "a" / RESUME_FILE).read_text())
    document["tensors"]["file"] = "../b/" + theirs.name
    (tmp_path / "a" / RESUME_FILE).write_text(json.dumps(document))
    with pytest.raises(ResumeError, match="in the same folder"):
        load_resume_point(tmp_path / "a" / RESUME_FILE)


# An old out-dir's resume.pt (a bare pickle), and the current file name (a torch.save zip).
CLI_CASES = [("pickle", "resume.pt"), ("torch-zip", RESUME_FILE)]


@pytest.mark.parametrize(("kind", "name"), CLI_CASES)
def test_the_resume_command_refuses_a_crafted_pickle(kind: str, name: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    run.mkdir()
    (run / name).write_bytes(_crafted(kind, marker))
    done = subprocess.run(
        [str(FEDFUSION), "server", "resume", str(run), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0, done.stdout
    message = " ".join(done.stderr.split())
    assert "refusing to unpickle it (it could run code)" in message, done.stderr
    assert "flwr run" not in done.stdout
    assert not marker.exists()
