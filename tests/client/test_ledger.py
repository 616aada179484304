from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from client.ledger import (
    LEDGER_DIR,
    RESETS_LOG,
    LedgerCorruptError,
    LedgerError,
    SiteLedger,
    dataset_id,
)
from client.privacy import PrivacyLedger

ROOT = Path(__file__).resolve().parents[2]
FEDFUSION = Path(sys.executable).with_name("fedfusion")
DELTA = 1e-5
ROUND_STEPS = [(1.1, 0.1, 20)]  # one round's accountant history


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "site.csv"
    path.write_text("patient_id,label,bmode\np1,low,a.png\np2,high,b.png\n")
    return path


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a new interpreter (another process of the site)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_dataset_id_is_the_manifests_sha256(manifest: Path, tmp_path: Path) -> None:
    assert dataset_id(manifest) == hashlib.sha256(manifest.read_bytes()).hexdigest()
    copy = tmp_path / "elsewhere.csv"
    copy.write_bytes(manifest.read_bytes())
    assert dataset_id(copy) == dataset_id(manifest)  # the same data set under another path
    with pytest.raises(LedgerError, match="cannot read manifest .*missing.csv"):
        dataset_id(tmp_path / "missing.csv")


def test_missing_ledger_is_empty_and_reading_creates_nothing(
    manifest: Path, tmp_path: Path
) -> None:
    ledger = SiteLedger.open(tmp_path / "state", manifest)
    assert ledger.entries == () and ledger.delta is None
    assert ledger.spent(DELTA) == 0.0 and ledger.privacy_ledger() == PrivacyLedger()
    assert not (tmp_path / "state").exists()


def test_record_appends_and_survives_a_new_process(manifest: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    ledger = SiteLedger.open(state, manifest)
    after_one = ledger.record(ROUND_STEPS, plan_hash="plan-a", round=1, delta=DELTA)
    after_two = ledger.record(
        PrivacyLedger(ROUND_STEPS), plan_hash="plan-a", round=2, delta=DELTA, run_label="r1"
    )
    assert after_one.history == ROUND_STEPS and after_two.history == ROUND_STEPS * 2
    expected = PrivacyLedger(ROUND_STEPS * 2).spent(DELTA)
    assert ledger.spent() == pytest.approx(expected)  # the ledger's own delta
    path = state / LEDGER_DIR / f"{dataset_id(manifest)}.json"
    assert ledger.path == path and path.is_file()
    assert not list(path.parent.glob("*.tmp"))
    # a new process (a new run, a restarted SuperNode) sees every step and its audit fields
    done = _python(
        """
        import json, sys
        from client.ledger import SiteLedger
        ledger = SiteLedger.open(sys.argv[1], sys.argv[2])
        print(json.dumps({"spent": ledger.spent(1e-5), "delta": ledger.delta,
                          "entries": [[e.plan_hash, e.run_label, e.round, e.steps, e.recorded_at]
                                      for e in ledger.entries]}))
        """,
        str(state),
        str(manifest),
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["spent"] == pytest.approx(expected) and seen["delta"] == DELTA
    assert [e[:4] for e in seen["entries"]] == [["plan-a", "", 1, 20], ["plan-a", "r1", 2, 20]]
    assert all(e[4].endswith("Z") for e in seen["entries"])  # UTC


BAD_RECORDS = [
    ({"steps": []}, "no steps to record"),
    ({"steps": [(0.0, 0.1, 5)]}, "step entry 0 must be"),
    ({"steps": [(1.0, 1.5, 5)]}, "step entry 0 must be"),
    ({"steps": [(1.0, 0.1, 0)]}, "step entry 0 must be"),
    ({"plan_hash": ""}, "plan_hash must be a non-empty string"),
    ({"round": -1}, "round must be an int >= 0"),
    ({"delta": 0}, r"delta must be in \(0, 1\)"),
]


@pytest.mark.parametrize(("change", "message"), BAD_RECORDS)
def test_bad_records_are_refused_and_nothing_is_written(
    manifest: Path, tmp_path: Path, change: dict, message: str
) -> None:
    ledger = SiteLedger.open(tmp_path, manifest)
    kwargs = {"steps": ROUND_STEPS, "plan_hash": "p", "round": 1, "delta": DELTA, **change}
    with pytest.raises(LedgerError, match=message):
        ledger.record(kwargs.pop("steps"), **kwargs)
    assert not ledger.path.exists()


def test_an_interrupted_write_leaves_the_old_ledger(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = SiteLedger.open(tmp_path, manifest)
    ledger.record(ROUND_STEPS, plan_hash="p", round=1, delta=DELTA)
    before = ledger.path.read_bytes()

    def crash(src: object, dst: object) -> None:
        raise OSError("disk pulled out")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(LedgerError, match="cannot write privacy ledger file .*disk pulled out"):
        ledger.record(ROUND_STEPS, plan_hash="p", round=2, delta=DELTA)
    monkeypatch.undo()
    assert ledger.path.read_bytes() == before  # intact, and no temporary file left behind
    assert [p.name for p in ledger.folder.iterdir() if p.suffix == ".tmp"] == []
    assert [e.round for e in SiteLedger.open(tmp_path, manifest).entries] == [1]


CORRUPTIONS = [
    b"{not json",
    b"\xff\xfe binary",
    b'{"format": "something-else", "version": 1}',
    b"[]",
]


@pytest.mark.parametrize("content", CORRUPTIONS)
def test_a_corrupt_ledger_is_an_error_naming_the_file(
    manifest: Path, tmp_path: Path, content: bytes
) -> None:
    ledger = SiteLedger.open(tmp_path, manifest)
    ledger.record(ROUND_STEPS, plan_hash="p", round=1, delta=DELTA)
    ledger.path.write_bytes(content)
    with pytest.raises(LedgerCorruptError, match=f"privacy ledger {ledger.path} is corrupt"):
        SiteLedger.open(tmp_path, manifest)
    with pytest.raises(LedgerCorruptError):  # never silently treated as empty
        ledger.spent(DELTA)
    with pytest.raises(LedgerCorruptError):
        ledger.record(ROUND_STEPS, plan_hash="p", round=2, delta=DELTA)
    assert ledger.path.read_bytes() == content  # and nothing overwrites it


def test_a_ledger_of_another_data_set_or_with_bad_entries_is_corrupt(
    manifest: Path, tmp_path: Path
) -> None:
    ledger = SiteLedger.open(tmp_path, manifest)
    ledger.record(ROUND_STEPS, plan_hash="p", round=1, delta=DELTA)
    data = json.loads(ledger.path.read_text())
    ledger.path.write_text(json.dumps({**data, "dataset_id": "0" * 64}))
    with pytest.raises(LedgerCorruptError, match="belongs to data set"):
        ledger.spent(DELTA)
    data["entries"][0]["steps"] = -3
    ledger.path.write_text(json.dumps(data))
    with pytest.raises(LedgerCorruptError, match="entry 0 is out of range"):
        ledger.spent(DELTA)


def test_reset_archives_logs_and_needs_an_operator(
    manifest: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = SiteLedger.open(tmp_path, manifest)
    ledger.record(ROUND_STEPS, plan_hash="p", round=1, delta=DELTA)
    spent = ledger.spent()
    old = ledger.path.read_bytes()
    with pytest.raises(LedgerError, match="operator must name .*; reason must say why"):
        ledger.reset(operator=" ", reason="")
    assert ledger.spent() == spent  # refused: nothing changed
    with caplog.at_level(logging.WARNING, logger="client.ledger"):
        archive = ledger.reset(operator="dr who", reason="new consent period")
    assert archive is not None and archive.read_bytes() == old  # archived, not deleted
    assert archive.parent == ledger.folder and archive.name.startswith(ledger.dataset_id)
    assert ledger.entries == () and ledger.spent(DELTA) == 0.0
    assert json.loads(ledger.path.read_text())["reset"]["operator"] == "dr who"
    (event,) = [json.loads(line) for line in (ledger.folder / RESETS_LOG).read_text().splitlines()]
    assert event["operator"] == "dr who" and event["reason"] == "new consent period"
    assert event["epsilon_before"] == pytest.approx(spent) and event["entries_before"] == 1
    assert event["archived_as"] == archive.name and event["time"].endswith("Z")
    assert "RESET by dr who" in caplog.text and f"{spent:.4f}" in caplog.text
    # a ledger that vanishes after a reset is not an empty ledger either
    ledger.path.unlink()
    with pytest.raises(LedgerCorruptError, match="missing although it was reset"):
        SiteLedger.open(tmp_path, manifest)


def test_a_corrupt_ledger_can_be_reset(manifest: Path, tmp_path: Path) -> None:
    ledger = SiteLedger.open(tmp_path, manifest)
    ledger.record(ROUND_STEPS, plan_hash="p", round=1, delta=DELTA)
    ledger.path.write_bytes(b"garbage")
    archive = ledger.reset(operator="it", reason="disk error, restored from paper records")
    assert archive is not None and archive.read_bytes() == b"garbage"
    event = json.loads((ledger.folder / RESETS_LOG).read_text())
    assert event["epsilon_before"] is None and ledger.entries == ()


def test_concurrent_records_from_two_processes_are_all_kept(manifest: Path, tmp_path: Path) -> None:
    # both start recording together (after their imports), so their writes interleave
    code = """
        import sys, time
        from pathlib import Path
        from client.ledger import SiteLedger
        state, manifest, label = sys.argv[1:]
        ledger = SiteLedger.open(state, manifest)
        Path(state, "ready-" + label).touch()
        while len(list(Path(state).glob("ready-*"))) < 2:
            time.sleep(0.01)
        for i in range(40):
            ledger.record([(1.0, 0.05, 1)], plan_hash="p", round=i, delta=1e-5, run_label=label)
        """
    args = [str(tmp_path), str(manifest)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), *args, label],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for label in ("a", "b")
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    entries = SiteLedger.open(tmp_path, manifest).entries
    assert sorted((e.run_label, e.round) for e in entries) == sorted(
        (label, i) for label in ("a", "b") for i in range(40)
    )


def test_a_transaction_holds_off_other_writers(manifest: Path, tmp_path: Path) -> None:
    ledger = SiteLedger.open(tmp_path, manifest)
    ready = tmp_path / "imported"
    code = """
        import sys
        from pathlib import Path
        from client.ledger import SiteLedger
        ledger = SiteLedger.open(sys.argv[1], sys.argv[2])
        Path(sys.argv[3]).touch()
        ledger.record([(1.0, 0.1, 1)], plan_hash="other", round=1, delta=1e-5)
        """
    with ledger.transaction():
        other = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), str(tmp_path), str(manifest), str(ready)],
            cwd=ROOT,
        )
        deadline = time.monotonic() + 300
        while not ready.exists() and other.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists()
        with pytest.raises(subprocess.TimeoutExpired):
            other.wait(timeout=2)  # it waits for the lock
        assert ledger.entries == ()  # so the budget checked here is still the budget
        ledger.record(ROUND_STEPS, plan_hash="mine", round=1, delta=DELTA)  # re-entrant
    assert other.wait(timeout=300) == 0
    assert [e.plan_hash for e in ledger.entries] == ["mine", "other"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FEDFUSION), "site", "ledger", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )


@pytest.mark.slow  # three `fedfusion` processes (a few seconds of imports each)
def test_cli_show_and_reset(manifest: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    ledger = SiteLedger.open(state, manifest)
    ledger.record(ROUND_STEPS, plan_hash="plan-a", round=3, delta=DELTA, run_label="series-1")
    spent = ledger.spent()
    where = ["--state-dir", str(state), "--manifest", str(manifest)]

    shown = _cli("show", *where)
    assert shown.returncode == 0, shown.stderr
    assert ledger.dataset_id in shown.stdout and "plan-a" in shown.stdout
    assert "series-1" in shown.stdout
    assert f"epsilon spent: {spent:.4f} at delta 1e-05" in shown.stdout

    refused = _cli("reset", *where, "--operator", "dr who", "--reason", "new data period")
    assert refused.returncode == 2 and "without --yes" in refused.stdout
    assert ledger.spent() == spent

    done = _cli("reset", *where, "--operator", "dr who", "--reason", "new data period", "--yes")
    assert done.returncode == 0, done.stderr
    assert f"epsilon spent before the reset: {spent:.4f}" in done.stdout
    assert ledger.entries == () and len(list(ledger.folder.glob("*.reset-*.json"))) == 1
    assert "dr who" in (ledger.folder / RESETS_LOG).read_text()


def test_cli_in_process_corrupt_ledger_and_delta(
    manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    from client.cli import register

    parser = argparse.ArgumentParser(prog="fedfusion")
    register(parser.add_subparsers(dest="command", required=True))

    def run(*argv: str) -> int:
        args = parser.parse_args(["site", "ledger", *argv])
        return args.func(args)

    where = ["--state-dir", str(tmp_path), "--manifest", str(manifest)]
    assert run("show", *where) == 0
    assert "epsilon spent: 0.0000" in capsys.readouterr().out
    ledger = SiteLedger.open(tmp_path, manifest)
    ledger.record(ROUND_STEPS, plan_hash="p", round=1, delta=DELTA)
    assert run("show", *where, "--dp-delta", "1e-3") == 0
    expected = PrivacyLedger(ROUND_STEPS).spent(1e-3)
    assert f"epsilon spent: {expected:.4f} at delta 0.001" in capsys.readouterr().out
    ledger.path.write_text("{")
    assert run("show", *where) == 2
    assert f"privacy ledger {ledger.path} is corrupt" in capsys.readouterr().out.replace("\n", "")
    with pytest.raises(SystemExit):  # --operator and --reason are required
        parser.parse_args(["site", "ledger", "reset", *where, "--yes"])
