"""Turn ``results.json`` into ``report.md`` with learning-curve and ROC plots."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers / CI
import matplotlib.pyplot as plt  # noqa: E402

from models.metrics import ScoreSummary, roc_curve_from_summary  # noqa: E402

__all__ = ["write_report", "metric_table_rows", "TABLE_METRICS"]

_log = logging.getLogger(__name__)

TABLE_METRICS = ("accuracy", "sensitivity", "specificity", "ppv", "npv", "f1")


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _auc_cell(metrics: dict[str, Any]) -> str:
    auc, ci = metrics.get("auc"), metrics.get("auc_ci")
    if auc is None:
        return "n/a"
    if isinstance(ci, list) and len(ci) == 2 and None not in ci:
        return f"{auc:.3f} ({ci[0]:.3f}-{ci[1]:.3f})"
    return f"{auc:.3f}"


def metric_table_rows(run: dict[str, Any]) -> list[list[str]]:
    """Rows ``[scope, n, AUC (CI), accuracy, ...]`` for a run's final round: global, then sites."""
    rows = []
    scopes = [("global", run["final"]["global"])]
    scopes += [(name, m) for name, m in sorted(run["final"]["sites"].items())]
    for scope, metrics in scopes:
        rows.append(
            [scope, str(metrics.get("n", "")), _auc_cell(metrics)]
            + [_fmt(metrics.get(k)) for k in TABLE_METRICS]
        )
    return rows


def _plot_learning_curves(run: dict[str, Any], path: Path) -> None:
    rounds = run["rounds"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, metric in zip(axes, ("auc", "accuracy", "loss"), strict=True):
        xs = [r["round"] for r in rounds]
        ax.plot(xs, [r["global"].get(metric) for r in rounds], "k-o", lw=2.5, label="global")
        sites = sorted({s for r in rounds for s in r["sites"]})
        for site in sites:
            ys = [r["sites"].get(site, {}).get(metric) for r in rounds]
            ax.plot(xs, ys, "--o", lw=1.2, ms=3, label=site)
        ax.set_xlabel("round")
        ax.set_title(metric.upper() if metric == "auc" else metric)
        ax.grid(alpha=0.3)
        if metric in ("auc", "accuracy"):
            ax.set_ylim(0, 1.02)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{run['method']}: learning curves (global and per site)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_roc(runs: list[dict[str, Any]], path: Path) -> bool:
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    drawn = False
    for run in runs:
        summary_record = run["final"].get("summary")
        if not summary_record:
            continue
        summary = ScoreSummary.from_record(summary_record)
        if summary.num_classes != 2:
            continue
        fpr, tpr = roc_curve_from_summary(summary)
        auc = run["final"]["global"].get("auc")
        ax.plot(fpr, tpr, lw=2, label=f"{run['method']} (AUC {_fmt(auc)})")
        drawn = True
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title("ROC, all sites' test rows")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    if drawn:
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def write_report(results: dict[str, Any], out_dir: Path, *, command: str) -> Path:
    """Write ``report.md`` and its plots into ``out_dir``; returns the report path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    task = results["task"]
    lines = [
        f"# fedfusion simulation: {results['scenario']}",
        "",
        f"- task: `{task['name']}`, model `{task['model']}` with backbone "
        f"`{task['backbone']}` at {task['image_size']} px, classes {task['classes']}",
        f"- sites: {', '.join(results['sites'])}; seed {results['seed']}",
        f"- machine: {results['environment']['machine']}, {results['environment']['cpus']} CPUs",
        "",
    ]
    header = ["scope", "n", "AUC (95% CI, DeLong)", *TABLE_METRICS]
    for run in results["runs"]:
        n_rounds = len(run["rounds"])
        lines += [
            f"## {run['method']}: final model after round {n_rounds} "
            f"({run['wall_seconds']:.0f} s)",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
        ]
        lines += ["| " + " | ".join(row) + " |" for row in metric_table_rows(run)]
        first = run["rounds"][0]["global"] if run["rounds"] else {}
        lines += [
            "",
            f"Global AUC by round: "
            + ", ".join(_fmt(r["global"].get("auc")) for r in run["rounds"])
            + f" (round 1: {_fmt(first.get('auc'))}).",
            "",
        ]
        curves = out_dir / f"learning_curves_{run['method']}.png"
        _plot_learning_curves(run, curves)
        lines += [f"![learning curves]({curves.name})", ""]
        failures = [f for r in run["rounds"] for f in r.get("failures", [])]
        if failures:
            lines += ["Sites that did not contribute:", ""]
            lines += [f"- round {f['round']} {f['stage']}: {f['reason']}" for f in failures]
            lines.append("")
    roc = out_dir / "roc.png"
    if _plot_roc(results["runs"], roc):
        lines += ["## ROC", "", f"![ROC]({roc.name})", ""]
    lines += [
        "## How these numbers were computed",
        "",
        "Each site evaluates the global model on its own test rows (a patient-level split) and",
        "shares only per-class score histograms and confusion counts. Global metrics come from",
        "the sum of those counts: AUC treats scores in one histogram bin as tied, and its 95%",
        "confidence interval uses DeLong's variance on the binned scores. The model reported is",
        "the one after the last round; no round was selected on test data.",
        "",
        "## Reproduce",
        "",
        "```",
        command,
        "```",
        "",
        "Resolved run configuration:",
        "",
        "```json",
        json.dumps(results["config"], indent=2),
        "```",
        "",
    ]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    _log.info("report written to %s", path)
    return path
