"""A real 2-round, 3-site lymph-node simulation (K = 3) through Flower's engine, on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulation.cli import main
from simulation.results_schema import validate_results

pytestmark = pytest.mark.slow

SITES = {"hospital-a", "hospital-b", "hospital-c"}

SCENARIO = """
description = "tiny three-hospital for tests"
task = "lymph-node"

[data]
generator = "lymph-node"
sites = { hospital-a = 9, hospital-b = 8, hospital-c = 8 }
class-mix = { hospital-c = [0.3, 0.4, 0.3] }
images-per-patient = [1, 1]
image-size = 32

[run]
backbone = "test_resnet"
image-size = 32
num-server-rounds = 2
batch-size = 8
learning-rate = 0.01
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sim3")
    scenario = root / "tiny3.toml"
    scenario.write_text(SCENARIO)
    code = main(
        ["simulate", str(scenario), "--out", str(root / "out"), "--seed", "2", "--cpus", "2"]
    )
    assert code == 0
    return root / "out"


def test_three_class_results_follow_the_contract(run_dir: Path) -> None:
    results = json.loads((run_dir / "results.json").read_text())
    validate_results(results)
    assert results["task"]["classes"] == ["metastatic", "lymphoma", "benign"]
    assert results["task"]["modalities"] == ["us2d", "cdfi", "elasto"]
    (run,) = results["runs"]
    for record in run["rounds"]:
        assert set(record["sites"]) == SITES, record.get("failures")
    final = run["final"]
    assert final["global"]["n"] == sum(m["n"] for m in final["sites"].values()) > 0
    for key in ("auc", "macro_f1", "macro_sensitivity", "sensitivity_2", "auc_ci_0"):
        assert key in final["global"]
    confusion = final["global"]["confusion"]
    assert len(confusion) == 3 and sum(map(sum, confusion)) == final["global"]["n"]
    assert final["summary"]["summary-shape"][0] == 3


def test_report_shows_macro_metrics(run_dir: Path) -> None:
    report = (run_dir / "report.md").read_text()
    assert "macro AUC (OvR)" in report and "| hospital-c |" in report
    assert "| true \\ predicted | metastatic | lymphoma | benign |" in report
    assert (run_dir / "roc.png").is_file()
