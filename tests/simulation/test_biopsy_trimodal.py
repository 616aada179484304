"""A real biopsy-trimodal simulation (CMUS-Net, TEM bags) through Flower's engine, tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulation.cli import main
from simulation.results_schema import validate_results
from simulation.scenario import load_scenario

pytestmark = pytest.mark.slow

SITES = {"lab-a", "lab-b", "lab-c"}

SCENARIO = """
description = "tiny biopsy-trimodal for tests"
task = "glomerular-disease"

[data]
generator = "biopsy"
sites = { lab-a = 8, lab-b = 7, lab-c = 7 }
tem-per-patient = [2, 4]
image-size = 32

[run]
backbone = "test_resnet"
image-size = 32
num-server-rounds = 1
batch-size = 4
learning-rate = 0.005
"""


def test_bundled_scenario_is_the_three_lab_glomerular_task() -> None:
    scenario = load_scenario("biopsy-trimodal")
    assert scenario.task == "glomerular-disease"
    assert set(scenario.data["sites"]) == SITES
    assert scenario.data["tem-per-patient"] == [2, 6]


def test_biopsy_trimodal_runs_and_reports_multiclass_metrics(tmp_path: Path) -> None:
    scenario = tmp_path / "tiny-biopsy.toml"
    scenario.write_text(SCENARIO)
    out = tmp_path / "out"
    code = main(["simulate", str(scenario), "--out", str(out), "--seed", "1", "--cpus", "2"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    validate_results(results)
    assert results["task"]["model"] == "cmusnet" and results["task"]["bags"] == ["tem"]
    assert results["task"]["classes"] == ["IgAN", "MN", "LN"]
    (run,) = results["runs"]
    (record,) = run["rounds"]
    assert set(record["sites"]) == SITES, record.get("failures")
    final = run["final"]["global"]
    assert final["n"] == sum(m["n"] for m in run["final"]["sites"].values()) > 0
    for key in ("auc", "accuracy", "macro_f1", "sensitivity_0", "sensitivity_2"):
        assert key in final
    assert sum(map(sum, final["confusion"])) == final["n"]
    report = (out / "report.md").read_text()
    assert "macro AUC (OvR)" in report and "| true \\ predicted | IgAN | MN | LN |" in report
