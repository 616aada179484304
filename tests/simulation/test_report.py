"""``simulation.report``: tables for binary and multi-class runs, report.md and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.metrics import ScoreSummary, summary_metrics
from simulation.report import metric_table, metric_table_rows, write_report
from strategies.history import json_safe

CLASSES_3 = ["metastatic", "lymphoma", "benign"]

HEADER_CASES = [  # (K, columns that must be in the header, columns that must not)
    (2, ["AUC (95% CI, DeLong)", "sensitivity", "specificity", "npv"], ["macro_f1"]),
    (
        3,
        ["macro AUC (OvR)", "macro_f1", "macro_sensitivity", "sens. lymphoma"],
        ["specificity", "npv"],
    ),
]


def _summary(k: int, n: int, seed: int) -> ScoreSummary:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 2.0 * np.eye(k)[y]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return ScoreSummary.from_scores(y, probs, loss_sum=0.5 * n)


def _results(k: int) -> dict[str, Any]:
    sites = {"site-a": _summary(k, 40, 1), "site-b": _summary(k, 30, 2)}
    total = sum(sites.values())
    metrics = {name: {**summary_metrics(s), "n": s.n} for name, s in sites.items()}
    final = {"global": {**summary_metrics(total), "n": total.n}, "sites": metrics}
    rounds = [{"round": 1, "global": final["global"], "sites": metrics, "failures": []}]
    classes = CLASSES_3 if k == 3 else ["low", "high"]
    return json_safe(
        {
            "scenario": "unit",
            "task": {
                "name": "t",
                "model": "m",
                "backbone": "b",
                "image_size": 32,
                "classes": classes,
            },
            "seed": 0,
            "sites": list(sites),
            "environment": {"machine": "x", "cpus": 2},
            "config": {},
            "runs": [
                {
                    "method": "fedavg",
                    "rounds": rounds,
                    "final": {**final, "summary": total.to_record()},
                    "wall_seconds": 1.0,
                }
            ],
        }
    )


@pytest.mark.parametrize(("k", "present", "absent"), HEADER_CASES)
def test_table_columns_follow_the_number_of_classes(
    k: int, present: list[str], absent: list[str]
) -> None:
    results = _results(k)
    header, rows = metric_table(results["runs"][0], results["task"]["classes"])
    for column in present:
        assert column in header
    for column in absent:
        assert column not in header
    assert [row[0] for row in rows] == ["global", "site-a", "site-b"]
    assert all(len(row) == len(header) for row in rows)
    assert rows[0][1] == "70"
    assert metric_table_rows(results["runs"][0]) == rows


def test_multiclass_table_values_come_from_the_macro_metrics() -> None:
    results = _results(3)
    run = results["runs"][0]
    header, rows = metric_table(run, CLASSES_3)
    g = run["final"]["global"]
    assert rows[0][header.index("macro AUC (OvR)")] == f"{g['auc']:.3f}"
    assert rows[0][header.index("macro_f1")] == f"{g['macro_f1']:.3f}"
    assert rows[0][header.index("sens. benign")] == f"{g['sensitivity_2']:.3f}"


def test_multiclass_report_has_macro_columns_confusion_and_roc(tmp_path: Path) -> None:
    results = _results(3)
    report = write_report(results, tmp_path, command="fedfusion simulate unit").read_text()
    assert "macro AUC (OvR)" in report and "sens. lymphoma" in report
    assert "| true \\ predicted | metastatic | lymphoma | benign |" in report
    assert "Global macro AUC by round" in report
    assert "One-vs-rest AUC per class: metastatic" in report
    assert (tmp_path / "roc.png").stat().st_size > 1000


def test_binary_report_is_unchanged(tmp_path: Path) -> None:
    report = write_report(_results(2), tmp_path, command="x").read_text()
    assert "AUC (95% CI, DeLong)" in report and "| global | 70 |" in report
    assert "confusion matrix" not in report and "macro" not in report.split("## How")[0]
