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

__all__ = [
    "COMPARISON_HEADER",
    "comparison_rows",
    "write_report",
    "metric_table",
    "metric_table_rows",
    "TABLE_METRICS",
    "MULTICLASS_TABLE_METRICS",
]

_log = logging.getLogger(__name__)

TABLE_METRICS = ("accuracy", "sensitivity", "specificity", "ppv", "npv", "f1")
# K > 2: macro averages over the classes, then the recall of each class.
MULTICLASS_TABLE_METRICS = ("accuracy", "macro_sensitivity", "macro_ppv", "macro_f1")
# Segmentation runs add the mean per-image Dice and IoU of the predicted masks.
SEGMENTATION_TABLE_METRICS = ("dice", "iou")


def _has_segmentation(run: dict[str, Any]) -> bool:
    return "dice" in run["final"]["global"]


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _auc_cell(metrics: dict[str, Any]) -> str:
    auc, ci = metrics.get("auc"), metrics.get("auc_ci")
    if auc is None:
        return "n/a"
    if isinstance(ci, list) and len(ci) == 2 and None not in ci:
        return f"{auc:.3f} ({ci[0]:.3f}-{ci[1]:.3f})"
    return f"{auc:.3f}"


def _num_classes(run: dict[str, Any]) -> int:
    """K of a run, from the confusion matrix of its final metrics (2 when unknown)."""
    scopes = [run["final"]["global"], *run["final"]["sites"].values()]
    for metrics in scopes:
        confusion = metrics.get("confusion")
        if isinstance(confusion, list) and confusion:
            return len(confusion)
    return 2


def metric_table(
    run: dict[str, Any], classes: list[str] | None = None
) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a run's final-round table: global, then each site.

    Binary runs (K = 2) show AUC with its DeLong CI and :data:`TABLE_METRICS`; multi-class
    runs show the macro one-vs-rest AUC, :data:`MULTICLASS_TABLE_METRICS` and the recall
    (sensitivity) of each class.

    Args:
        run: one entry of ``results["runs"]``.
        classes: class names for the per-class columns (``results["task"]["classes"]``);
            default ``class 0``, ``class 1``, ...
    """
    k = _num_classes(run)
    names = list(classes) if classes and len(classes) == k else [f"class {c}" for c in range(k)]
    if k == 2:
        header = ["scope", "n", "AUC (95% CI, DeLong)", *TABLE_METRICS]
    else:
        header = ["scope", "n", "macro AUC (OvR)", *MULTICLASS_TABLE_METRICS]
        header += [f"sens. {name}" for name in names]
    segmentation = _has_segmentation(run)
    if segmentation:
        header += ["Dice", "IoU"]
    rows = []
    scopes = [("global", run["final"]["global"])]
    scopes += [(name, m) for name, m in sorted(run["final"]["sites"].items())]
    for scope, metrics in scopes:
        row = [scope, str(metrics.get("n", ""))]
        if k == 2:
            row += [_auc_cell(metrics)] + [_fmt(metrics.get(key)) for key in TABLE_METRICS]
        else:
            row += [_fmt(metrics.get("auc"))]
            row += [_fmt(metrics.get(key)) for key in MULTICLASS_TABLE_METRICS]
            row += [_fmt(metrics.get(f"sensitivity_{c}")) for c in range(k)]
        if segmentation:
            row += [_fmt(metrics.get(key)) for key in SEGMENTATION_TABLE_METRICS]
        rows.append(row)
    return header, rows


def metric_table_rows(run: dict[str, Any]) -> list[list[str]]:
    """The rows of :func:`metric_table` (global, then sites) without the header."""
    return metric_table(run)[1]


def _confusion_lines(run: dict[str, Any], classes: list[str]) -> list[str]:
    """The global confusion matrix of the final round as a markdown table (K > 2 runs)."""
    confusion = run["final"]["global"].get("confusion")
    if not isinstance(confusion, list) or len(confusion) != len(classes):
        return []
    lines = [
        "Global confusion matrix (rows: true class, columns: predicted):",
        "",
        "| true \\ predicted | " + " | ".join(classes) + " |",
        "|" + "---|" * (len(classes) + 1),
    ]
    lines += [
        f"| {name} | " + " | ".join(str(v) for v in row) + " |"
        for name, row in zip(classes, confusion, strict=True)
    ]
    aucs = [run["final"]["global"].get(f"auc_{c}") for c in range(len(classes))]
    lines += [
        "",
        "One-vs-rest AUC per class: "
        + ", ".join(f"{name} {_fmt(a)}" for name, a in zip(classes, aucs, strict=True))
        + ".",
    ]
    return lines


def _plot_learning_curves(run: dict[str, Any], path: Path) -> None:
    rounds = run["rounds"]
    metrics = ("auc", "accuracy", "loss") + (("dice",) if _has_segmentation(run) else ())
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.4 * len(metrics), 3.8))
    for ax, metric in zip(axes, metrics, strict=True):
        xs = [r["round"] for r in rounds]
        ax.plot(xs, [r["global"].get(metric) for r in rounds], "k-o", lw=2.5, label="global")
        sites = sorted({s for r in rounds for s in r["sites"]})
        for site in sites:
            ys = [r["sites"].get(site, {}).get(metric) for r in rounds]
            ax.plot(xs, ys, "--o", lw=1.2, ms=3, label=site)
        ax.set_xlabel("round")
        ax.set_title(metric.upper() if metric == "auc" else metric)
        ax.grid(alpha=0.3)
        if metric in ("auc", "accuracy", "dice"):
            ax.set_ylim(0, 1.02)
    if len(rounds[0]["sites"] if rounds else {}) <= 12:  # 50 site names would fill the figure
        axes[0].legend(fontsize=8)
    fig.suptitle(f"{run['method']}: learning curves (global and per site)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_roc(runs: list[dict[str, Any]], path: Path, classes: list[str]) -> bool:
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    drawn = False
    for run in runs:
        summary_record = run["final"].get("summary")
        if not summary_record:
            continue
        summary = ScoreSummary.from_record(summary_record)
        if summary.num_classes != 2:
            for c in range(summary.num_classes):  # one-vs-rest curve per class
                fpr, tpr = roc_curve_from_summary(summary, positive=c)
                auc = run["final"]["global"].get(f"auc_{c}")
                name = classes[c] if c < len(classes) else f"class {c}"
                ax.plot(fpr, tpr, lw=1.5, label=f"{run['method']}: {name} (AUC {_fmt(auc)})")
            drawn = True
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


def comparison_rows(results: dict[str, Any]) -> list[list[str]]:
    """One row per method: global AUC (CI) and accuracy, and the mean of the sites' AUCs."""
    rows = []
    for run in results["runs"]:
        final = run["final"]
        site_aucs = [m.get("auc") for m in final["sites"].values() if m.get("auc") is not None]
        mean_site = sum(site_aucs) / len(site_aucs) if site_aucs else None
        rows.append(
            [
                run["method"],
                _auc_cell(final["global"]),
                _fmt(final["global"].get("accuracy")),
                _fmt(mean_site),
                f"{run['wall_seconds']:.0f}",
            ]
        )
    return rows


COMPARISON_HEADER = [
    "method",
    "global AUC (95% CI)",
    "global accuracy",
    "mean of sites' AUC",
    "seconds",
]


def write_report(results: dict[str, Any], out_dir: Path, *, command: str) -> Path:
    """Write ``report.md`` and its plots into ``out_dir``; returns the report path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    task = results["task"]
    lines = [
        f"# fedfusion simulation: {results['scenario']}",
        "",
        f"- task: `{task['name']}`, model `{task['model']}` "
        + (
            (f"with backbone `{task['backbone']}` " if task.get("backbone") else "")
            + f"at {task['image_size']} px"
            if task.get("modalities", True)
            else f"on {len(task.get('features', []))} clinical features"
        )
        + f", classes {task['classes']}"
        + (
            " (segmentation model: Dice and IoU of the predicted masks are reported too)"
            if any(_has_segmentation(run) for run in results["runs"])
            else ""
        ),
        f"- sites: {', '.join(results['sites'])}; seed {results['seed']}",
        f"- machine: {results['environment']['machine']}, {results['environment']['cpus']} CPUs",
        "",
    ]
    if len(results["runs"]) > 1:
        lines += [
            "## Methods compared (final models, test rows)",
            "",
            "Every method gets the same training budget: num-server-rounds x local-epochs epochs "
            "over each training row; `local:<site>` trains on that site alone, `pooled` on all "
            "sites' training rows together (an upper bound that federation exists to avoid).",
            "",
            "| " + " | ".join(COMPARISON_HEADER) + " |",
            "|" + "---|" * len(COMPARISON_HEADER),
        ]
        lines += ["| " + " | ".join(row) + " |" for row in comparison_rows(results)]
        lines.append("")
    for run in results["runs"]:
        header, table_rows = metric_table(run, list(task["classes"]))
        n_rounds = len(run["rounds"])
        lines += [
            f"## {run['method']}: final model after round {n_rounds} ({run['wall_seconds']:.0f} s)",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
        ]
        lines += ["| " + " | ".join(row) + " |" for row in table_rows]
        if _num_classes(run) > 2:
            lines += [""] + _confusion_lines(run, list(task["classes"]))
        first = run["rounds"][0]["global"] if run["rounds"] else {}
        auc_name = "macro AUC" if _num_classes(run) > 2 else "AUC"
        lines += [
            "",
            f"Global {auc_name} by round: "
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
    if _plot_roc(results["runs"], roc, list(task["classes"])):
        lines += ["## ROC", "", f"![ROC]({roc.name})", ""]
    lines += [
        "## How these numbers were computed",
        "",
        "Each site evaluates the global model on its own test rows (a patient-level split) and",
        "shares only per-class score histograms and confusion counts. Global metrics come from",
        "the sum of those counts: AUC treats scores in one histogram bin as tied, and its 95%",
        "confidence interval uses DeLong's variance on the binned scores. The model reported is",
        "the one after the last round; no round was selected on test data. With more than two",
        "classes, AUC is the macro average of the one-vs-rest AUCs (one curve per class).",
        "",
    ]
    if any(_has_segmentation(run) for run in results["runs"]):
        lines += [
            "Segmentation: each site computes the foreground Dice and IoU of every test image's",
            "predicted mask (argmax) with MONAI's DiceMetric / MeanIoU and shares only their sums",
            "and the image count; Dice and IoU are means over all sites' test images. For a",
            "segmentation-only model, AUC and accuracy score whether a slice shows tumour (peak",
            "foreground probability); for DFS they score the fused risk output.",
            "",
        ]
    lines += [
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
