from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from client.cli import register, run_check
from tests.client._data import make_site, write_csv


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedfusion")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def _run(*argv: str) -> int:
    args = _parser().parse_args(list(argv))
    assert args.func is run_check
    return args.func(args)


def test_check_prints_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = make_site(tmp_path, labels=("low", "high") * 4)
    rows[0]["ceus"] = ""
    path = write_csv(tmp_path / "site.csv", rows)
    code = _run("site", "check", "--manifest", str(path), "--task", "rcc-grading")
    out = capsys.readouterr().out
    assert code == 0
    assert "manifest OK" in out and "site.csv" in out
    for word in ("split", "rows", "patients", "low", "high", "bmode", "ceus", "train", "test"):
        assert word in out


def test_check_prints_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = make_site(tmp_path, labels=("low", "high", "low"))
    rows[0]["bmode"] = "img/missing.png"
    (tmp_path / "img/text.png").write_text("not an image")
    rows[1]["ceus"] = "img/text.png"
    rows[2]["label"] = "G3"
    path = write_csv(tmp_path / "site.csv", rows)
    code = _run("site", "check", "--manifest", str(path), "--task", "rcc-grading")
    out = capsys.readouterr().out
    assert code == 2
    assert "site.csv: 3 problems" in out
    assert "row 2, column 'bmode': file not found" in out
    assert "row 3, column 'ceus': cannot read image" in out
    assert "row 4, column 'label': unknown label 'G3'" in out
    # --no-image-check skips opening images
    _run("site", "check", "--manifest", str(path), "--task", "rcc-grading", "--no-image-check")
    out = capsys.readouterr().out
    assert "2 problems" in out and "text.png" not in out


def test_check_site_and_bad_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = make_site(tmp_path, labels=("low", "high") * 2, extra={"site": ["a", "b"] * 2})
    path = write_csv(tmp_path / "site.csv", rows)
    assert _run("site", "check", "--manifest", str(path), "--task", "rcc", "--site", "a") == 2
    assert "unknown task 'rcc'" in capsys.readouterr().out
    assert (
        _run("site", "check", "--manifest", str(path), "--task", "rcc-grading", "--site", "c") == 2
    )
    assert "unknown site 'c'" in capsys.readouterr().out
    assert (
        _run("site", "check", "--manifest", str(path), "--task", "rcc-grading", "--site", "a") == 0
    )
    assert "site a" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        _parser().parse_args(["site", "check", "--task", "rcc-grading"])
    assert exit_info.value.code == 2


def test_check_prints_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = make_site(tmp_path, labels=("low", "high") * 2)
    for row in rows:
        row["split"] = "test"  # an external-validation site: legal, but it cannot train
    path = write_csv(tmp_path / "site.csv", rows)
    code = _run("site", "check", "--manifest", str(path), "--task", "rcc-grading")
    out = capsys.readouterr().out
    assert code == 0 and "manifest OK" in out
    assert "warning: column 'split': the train split has no rows" in out
    assert "can only evaluate" in out
