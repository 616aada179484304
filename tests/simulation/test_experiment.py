"""The experiment runner end to end on tiny data: folds x seeds, a user manifest with natural
sites, DeLong comparisons, partitions from the command line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from simulation.cli import main
from simulation.results_schema import validate_results
from simulation.synthetic import generate_dual_center

pytestmark = pytest.mark.slow

SCENARIO = """
description = "tiny dual-center for experiment tests"
task = "rcc-grading"

[data]
generator = "dual-center"
sites = { north = 10, south = 8 }
images-per-patient = [1, 2]
image-size = 32
high-grade-fraction = 0.4
modality-signal = 3.0

[run]
backbone = "test_efficientnet"
image-size = 32
num-server-rounds = 1
batch-size = 8
learning-rate = 0.01

[experiment]
single-modality = "fedavg"
"""


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scenario") / "tiny.toml"
    path.write_text(SCENARIO)
    return path


@pytest.fixture(scope="module")
def user_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hospital-style manifest: own site names, integer labels, paths relative to it."""
    root = tmp_path_factory.mktemp("user")
    generated = generate_dual_center(
        root / "export",
        patients_per_site={"a": 9, "b": 9},
        images_per_patient=(1, 2),
        image_size=32,
        high_grade_fraction=0.4,
        modality_signal=3.0,
        seed=5,
    )
    frame = pd.read_csv(generated, dtype=str)
    frame["site"] = frame["site"].map({"a": "St Mary's", "b": "Charité"})
    frame["label"] = frame["label"].map({"low": "0", "high": "1"})
    for column in ("bmode", "ceus"):
        frame[column] = "export/" + frame[column]
    path = root / "hospitals.csv"
    frame.to_csv(path, index=False)
    return path


def _run(args: list[str]) -> dict:
    assert main(["simulate", *args, "--cpus", "2", "--db", "none"]) == 0
    out = Path(args[args.index("--out") + 1])
    results = json.loads((out / "results.json").read_text())
    validate_results(results)
    return results


def test_folds_and_seeds_give_repetitions_with_cis(scenario: Path, tmp_path: Path) -> None:
    out = tmp_path / "cv"
    results = _run(
        [str(scenario), "--methods", "local,pooled", "--folds", "2", "--seeds", "0,1"]
        + ["--out", str(out)]
    )
    exp = results["experiment"]
    assert exp["folds"] == 2 and exp["seeds"] == [0, 1] and len(exp["repetitions"]) == 4
    assert exp["single_modality"] is None  # no federated method: nothing to pair it with
    runs = results["runs"]
    assert {(r["seed"], r["fold"]) for r in runs} == {(s, k) for s in (0, 1) for k in (1, 2)}
    stats = results["summary"]["pooled"]["pooled"]["auc"]
    assert stats["n"] == 4 and stats["ci"][0] <= stats["mean"] <= stats["ci"][1]
    local = results["summary"]["local"]
    assert {"pooled", "site-mean", "site:north", "site:south"} <= set(local)
    # out-of-fold: every patient tested once per seed, for both seeds
    n_rows = len(pd.read_csv(out / "data" / "manifest.csv"))
    for seed in ("0", "1"):
        assert results["out_of_fold"]["pooled"][seed]["n"] == n_rows
    report = (out / "report.md").read_text()
    assert "2-fold patient-level cross-validation" in report
    assert "| pooled |" in report and "(95% t interval)" in report
    for png in ("site_bars.png", "learning_curves.png", "roc.png"):
        assert (out / png).stat().st_size > 1000
    assert (out / "seed-1" / "fold-2" / "report.md").is_file()


def test_user_manifest_natural_sites_with_delong_comparisons(
    scenario: Path, user_manifest: Path, tmp_path: Path
) -> None:
    out = tmp_path / "user"
    results = _run(
        [str(scenario), "--manifest", str(user_manifest), "--methods", "fedavg,local"]
        + ["--out", str(out)]
    )
    assert results["sites"] == ["Charité", "St Mary's"]
    methods = {r["method"] for r in results["runs"]}
    assert methods == {
        "fedavg",
        "local:Charité",
        "local:St Mary's",
        "fedavg[bmode]",
        "fedavg[ceus]",
    }
    fedavg = next(r for r in results["runs"] if r["method"] == "fedavg")
    assert set(fedavg["final"]["sites"]) == {"Charité", "St Mary's"}
    comps = {(c["comparison"], c["b"], c["rows"]): c for c in results["comparisons"]}
    assert ("fedavg vs local", "local", "all sites") in comps
    assert ("fedavg vs local", "local:Charité", "Charité") in comps
    comparisons = results["comparisons"]
    everywhere = [c for c in comparisons if c["comparison"] == "fedavg vs local-only model"]
    assert {c["b"] for c in everywhere} == {"local:Charité", "local:St Mary's"}
    assert all(c["rows"] == "all sites" for c in everywhere)
    best = [c for c in results["comparisons"] if c["comparison"] == "fused vs best single"]
    assert len(best) == 1 and best[0]["b"] in ("fedavg[bmode]", "fedavg[ceus]")
    for c in results["comparisons"]:
        assert c["p"] is None or 0.0 <= c["p"] <= 1.0
        assert c["n"] == (
            fedavg["final"]["global"]["n"]
            if c["rows"] == "all sites"
            else fedavg["final"]["sites"][c["rows"]]["n"]
        )
    report = (out / "report.md").read_text()
    assert "| global |" in report and "DeLong comparisons" in report
    assert "fused vs best single" in report
    mean_local = sum(c["auc_b"] for c in everywhere) / 2
    assert "**fedavg vs the mean of the local-only models**" in report
    assert f"vs {mean_local:.3f}" in report


def test_partition_from_the_command_line(scenario: Path, tmp_path: Path) -> None:
    out = tmp_path / "part"
    results = _run(
        [str(scenario), "--methods", "pooled", "--partition", "dirichlet:0.5", "--sites", "4"]
        + ["--intensity-shift", "1", "--out", str(out)]
    )
    assert results["sites"] == ["site-01", "site-02", "site-03", "site-04"]
    part = results["experiment"]["partition"]
    assert part["spec"]["kind"] == "dirichlet" and part["spec"]["alpha"] == 0.5
    assert sum(s["patients"] for s in part["sites"].values()) == 18
    final = results["runs"][0]["final"]
    assert set(final["sites"]) == set(results["sites"])
    assert "partition" in (out / "report.md").read_text() or math.isfinite(final["global"]["n"])


def test_bad_experiment_options_fail_before_training(scenario: Path, tmp_path: Path) -> None:
    assert main(["simulate", str(scenario), "--partition", "dirichlet", "--sites", "3"]) == 2
    code = main(
        ["simulate", str(scenario), "--client-cpus", "4", "--cpus", "2", "--out", str(tmp_path)]
    )
    assert code == 2
