"""A real 2-round, 2-site simulation through Flower's engine (Ray), on tiny generated data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulation.cli import main
from simulation.results_schema import validate_results

pytestmark = pytest.mark.slow

SCENARIO = """
description = "tiny dual-center for tests"
task = "rcc-grading"

[data]
generator = "dual-center"
sites = { north = 10, south = 8 }
images-per-patient = [1, 2]
image-size = 32
high-grade-fraction = 0.4

[run]
backbone = "test_efficientnet"
image-size = 32
num-server-rounds = 2
batch-size = 8
learning-rate = 0.01
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sim")
    scenario = root / "tiny.toml"
    scenario.write_text(SCENARIO)
    code = main(
        ["simulate", str(scenario), "--out", str(root / "out"), "--seed", "3", "--cpus", "2"]
    )
    assert code == 0
    return root / "out"


def test_results_follow_the_contract(run_dir: Path) -> None:
    results = json.loads((run_dir / "results.json").read_text())
    validate_results(results)
    assert results["scenario"] == "tiny" and results["seed"] == 3
    (run,) = results["runs"]
    assert run["method"] == "fedavg"
    assert [r["round"] for r in run["rounds"]] == [1, 2]
    assert set(run["final"]["sites"]) == {"north", "south"}
    for record in run["rounds"]:
        assert set(record["sites"]) == {"north", "south"}, record.get("failures")
        assert set(record["train"]) == {"north", "south"}
        assert all(m["skipped-files"] == 0 for m in record["train"].values())  # clean data
    final = run["final"]
    # global metrics cover exactly the union of the sites' test rows
    assert final["global"]["n"] == sum(m["n"] for m in final["sites"].values()) > 0
    assert 0.0 <= final["global"]["accuracy"] <= 1.0


def test_report_and_outputs_exist(run_dir: Path) -> None:
    report = (run_dir / "report.md").read_text()
    assert "| global |" in report and "| north |" in report
    assert "fedfusion simulate" in report
    assert (run_dir / "learning_curves_fedavg.png").stat().st_size > 1000
    assert (run_dir / "fedavg" / "global_model.pt").is_file()
    history = json.loads((run_dir / "fedavg" / "history.json").read_text())
    assert len(history["rounds"]) == 2


def test_generated_data_uses_the_manifest_path(run_dir: Path) -> None:
    manifest = run_dir / "data" / "manifest.csv"
    header = manifest.read_text().splitlines()[0].split(",")
    assert {"patient_id", "site", "label", "bmode", "ceus"} <= set(header)
