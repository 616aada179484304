"""50 simulated sites through Flower's engine: the CKD table cut by a Dirichlet label skew,
the clinical logistic regression, one round."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulation.ckd import resolve_ckd_source
from simulation.cli import main

pytestmark = pytest.mark.slow

try:
    resolve_ckd_source()
    _MISSING = ""
except FileNotFoundError as err:
    _MISSING = str(err)


@pytest.mark.skipif(bool(_MISSING), reason=f"UCI CKD table absent: {_MISSING}")
def test_fifty_dirichlet_sites_complete_a_round(tmp_path: Path) -> None:
    out = tmp_path / "fifty"
    args = ["simulate", "ckd-clinical", "--partition", "dirichlet:0.5", "--sites", "50"]
    args += ["--methods", "fedavg", "--rounds", "1", "--cpus", "2", "--db", "none"]
    args += ["--run-config", 'task="ckd-risk-logreg" local-epochs=1', "--out", str(out)]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results["sites"]) == 50
    (run,) = results["runs"]
    (record,) = run["rounds"]
    assert len(record["train"]) == 50 and not record["failures"]
    assert run["final"]["global"]["n"] == sum(m["n"] for m in run["final"]["sites"].values())
    shares = [
        s["labels"]["ckd"] / s["rows"] for s in results["experiment"]["partition"]["sites"].values()
    ]
    assert max(shares) - min(shares) > 0.5  # Dirichlet(0.5): strongly skewed label mixes
