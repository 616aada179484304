"""`fedfusion simulate --dp-epsilon`: every simulated site trains with DP-SGD within its budget;
a site with a tiny budget of its own (`--site-dp-epsilon`) declines and the run goes on."""

from __future__ import annotations

import json

import pytest

from simulation.cli import main
from tests.simulation.test_end_to_end import SCENARIO

pytestmark = pytest.mark.slow

# The tiny scenario with a third, small site.
THREE_SITES = SCENARIO.replace(
    "sites = { north = 10, south = 8 }", "sites = { north = 10, south = 8, east = 6 }"
)


def test_sites_spend_within_budget_and_a_tiny_budget_declines(tmp_path) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(THREE_SITES)
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
            "--site-dp-epsilon",
            "east=0.001",
        ]
    )
    assert code == 0  # the run finishes without the declining site
    results = json.loads((out / "results.json").read_text())
    (run,) = results["runs"]
    assert results["config"]["dp-safe-model"] is True
    # each site's spent epsilon; east never trained
    assert set(run["epsilon"]) == {"north", "south", "east"}
    assert all(0 < run["epsilon"][s] <= 4 * 1.01 for s in ("north", "south"))
    assert run["epsilon"]["east"] == 0.0
    assert [r["round"] for r in run["rounds"]] == [1, 2]
    for record in run["rounds"]:
        assert set(record["train"]) == {"north", "south"}
        for site, metrics in record["train"].items():
            assert metrics["dp-epsilon-budget"] == 4.0, site
        (failure,) = [f for f in record["failures"] if f["stage"] == "train"]
        assert failure["reason"].startswith("error code 101")  # budget-exhausted, no site text
        assert "declines" not in failure["reason"]
        assert set(record["sites"]) == {"north", "south", "east"}  # east still evaluates
    spent_by_round = [r["train"]["north"]["dp-epsilon-spent"] for r in run["rounds"]]
    assert spent_by_round == sorted(spent_by_round) and spent_by_round[0] < spent_by_round[-1]
    audit = [json.loads(x) for x in (out / "fedavg" / "audit.jsonl").read_text().splitlines()]
    assert all(a["failed"][0]["error-code"] == 101 for a in audit)


def test_unknown_site_in_site_budget_is_refused(tmp_path, capsys) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(SCENARIO)
    args = ["simulate", str(scenario), "--out", str(tmp_path / "o"), "--site-dp-epsilon"]
    assert main([*args, "west=1"]) != 0
    assert "west, which is not a site of this simulation (sites: north, south)" in (
        capsys.readouterr().out
    )
    with pytest.raises(SystemExit, match="SITE=EPSILON"):
        main([*args, "east"])
