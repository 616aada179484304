"""`fedfusion simulate --dp-epsilon`: every simulated site trains with DP-SGD within its budget."""

from __future__ import annotations

import json

import pytest

from simulation.cli import main
from tests.simulation.test_end_to_end import SCENARIO

pytestmark = pytest.mark.slow


def test_each_site_reports_spent_epsilon_within_budget(tmp_path) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(SCENARIO)
    out = tmp_path / "out"
    code = main(
        [
            "simulate",
            str(scenario),
            "--out",
            str(out),
            "--cpus",
            "2",
            "--dp-epsilon",
            "4",
            "--dp-delta",
            "1e-4",
        ]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    (run,) = results["runs"]
    assert results["config"]["dp-safe-model"] is True
    assert set(run["epsilon"]) == {"north", "south"}
    assert all(0 < eps <= 4 * 1.01 for eps in run["epsilon"].values())
    for record in run["rounds"]:
        for site, metrics in record["train"].items():
            assert metrics["dp-epsilon-budget"] == 4.0, site
    spent_by_round = [r["train"]["north"]["dp-epsilon-spent"] for r in run["rounds"]]
    assert spent_by_round == sorted(spent_by_round) and spent_by_round[0] < spent_by_round[-1]
