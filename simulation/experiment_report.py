"""``report.md`` of an experiment (methods x folds x seeds) with its plots.

Sections: the answer (DeLong comparisons in words), methods x metrics for the pooled and the
site-mean views (mean +- sd, 95% t CI over repetitions, out-of-fold AUC with its DeLong CI),
per-site AUC (table and bars), comparisons table, out-of-fold ROC curves, learning curves
(mean over repetitions), links to each repetition's own report, how it was computed, and the
command and configuration to reproduce it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from simulation.aggregate import local_only_comparison  # noqa: E402
from simulation.report import write_report  # noqa: E402

__all__ = ["write_experiment_report", "summary_rows", "comparison_lines"]


def _f(value: Any, digits: int = 3) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (f"{value:.{digits}f}")
    )


def _cell(stat: dict[str, Any] | None) -> str:
    """``mean ± sd (low-high)``; one repetition: the value alone."""
    if not stat or stat.get("mean") is None:
        return "n/a"
    if stat.get("n", 0) < 2 or stat.get("sd") is None:
        return _f(stat["mean"])
    low, high = stat.get("ci") or (None, None)
    # every table metric lies in [0, 1]; the t interval of a mean near a bound can pass it
    low = None if low is None else max(0.0, low)
    high = None if high is None else min(1.0, high)
    return f"{_f(stat['mean'])} ± {_f(stat['sd'])} ({_f(low)}-{_f(high)})"


_NAMES = {
    "auc": "AUC",
    "accuracy": "accuracy",
    "macro_f1": "macro F1",
    "macro_sensitivity": "macro sensitivity",
    "f1": "F1",
}


def _method_order(results: dict[str, Any]) -> list[str]:
    names = list(results["summary"])
    requested = results["experiment"]["methods"]

    def key(name: str) -> tuple[int, str]:
        base = name.split("[")[0].split(":")[0]
        rank = requested.index(base) if base in requested else len(requested)
        return rank, name

    return sorted(names, key=key)


def _oof_auc(results: dict[str, Any], method: str) -> str:
    per_seed = results.get("out_of_fold", {}).get(method, {})
    cells = []
    for metrics in per_seed.values():
        auc, ci = (
            metrics.get("auc"),
            metrics.get("auc_ci") or metrics.get("bootstrap_ci", {}).get("auc"),
        )
        if auc is None:
            continue
        cells.append(f"{_f(auc)} ({_f(ci[0])}-{_f(ci[1])})" if ci and None not in ci else _f(auc))
    return "; ".join(cells) or "n/a"


def summary_rows(results: dict[str, Any], view: str) -> tuple[list[str], list[list[str]]]:
    """Methods x metrics of one view (``pooled`` or ``site-mean``): header and rows."""
    metrics = results["experiment"]["metrics"]
    header = ["method", *(_NAMES.get(m, m) for m in metrics)]
    if view == "pooled":
        header.append("out-of-fold AUC (95% CI)")
    rows = []
    for method in _method_order(results):
        stats = results["summary"][method].get(view)
        if not stats:
            continue
        row = [method, *(_cell(stats.get(m)) for m in metrics)]
        if view == "pooled":
            row.append(_oof_auc(results, method))
        rows.append(row)
    return header, rows


def _site_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    sites = results["sites"]
    header = ["method", *sites]
    rows = []
    for method in _method_order(results):
        views = results["summary"][method]
        if method.startswith("local:"):
            continue
        rows.append([method, *(_cell(views.get(f"site:{s}", {}).get("auc")) for s in sites)])
    return header, rows


def _p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def comparison_lines(results: dict[str, Any]) -> list[str]:
    """The DeLong comparisons as a markdown table."""
    comps = results.get("comparisons") or []
    if not comps:
        return []
    lines = [
        "| comparison | A | B | rows | seed | AUC A | AUC B | A - B (95% CI) | P (DeLong) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in comps:
        ci = c.get("diff_ci") or [None, None]
        lines.append(
            f"| {c['comparison']} | {c['a']} | {c['b']} | {c['rows']} | {c['seed']} | "
            f"{_f(c['auc_a'])} | {_f(c['auc_b'])} | {_f(c['diff'])} ({_f(ci[0])} to {_f(ci[1])})"
            f" | {_p(c['p'])} |"
        )
    return lines


def _answer(results: dict[str, Any]) -> list[str]:
    """One sentence per headline comparison (all sites' rows)."""
    lines = []
    summary = results["summary"]
    ref = results["experiment"]["reference"]
    for c in results.get("comparisons") or []:
        skip = ("fused vs single", local_only_comparison(ref))  # the latter: _local_only_answer
        if c["rows"] != "all sites" or c["comparison"] in skip:
            continue
        verdict = "higher" if c["diff"] > 0 else "lower"
        lines.append(
            f"- **{c['a']} vs {c['b']}**"
            + (" (best single modality)" if c["comparison"] == "fused vs best single" else "")
            + f" (seed {c['seed']}, "
            f"{c['n']} test rows{', out-of-fold' if results['experiment']['folds'] > 1 else ''}): "
            f"AUC {_f(c['auc_a'])} vs {_f(c['auc_b'])}, {verdict} by {_f(abs(c['diff']))} "
            f"(95% CI of the difference {_f(c['diff_ci'][0])} to {_f(c['diff_ci'][1])}), "
            f"DeLong P {_p(c['p'])}."
        )
    lines += _local_only_answer(results)
    if ref in summary and "local" in summary:
        a = summary[ref]["site-mean"].get("auc", {})
        b = summary["local"]["site-mean"].get("auc", {})
        if a.get("mean") is not None and b.get("mean") is not None:
            lines.append(
                f"- Mean over sites of each site's own test AUC: {ref} {_cell(a)}, "
                f"each hospital alone {_cell(b)}."
            )
    return lines


def _local_only_answer(results: dict[str, Any]) -> list[str]:
    """The reference against the mean of the local-only models, each used on every site."""
    ref = results["experiment"]["reference"]
    lines = []
    for seed in sorted({c["seed"] for c in results.get("comparisons") or []}):
        comps = [
            c
            for c in results["comparisons"]
            if c["comparison"] == local_only_comparison(ref) and c["seed"] == seed
        ]
        if not comps:
            continue
        mean = sum(c["auc_b"] for c in comps) / len(comps)
        verdict = "higher" if comps[0]["auc_a"] >= mean else "lower"
        each = "; ".join(
            f"{c['b']} {_f(c['auc_b'])} (difference {_f(c['diff'])}, "
            f"95% CI {_f(c['diff_ci'][0])} to {_f(c['diff_ci'][1])}, DeLong P {_p(c['p'])})"
            for c in comps
        )
        lines.append(
            f"- **{ref} vs the mean of the local-only models** (each site's model used on every "
            f"site's rows; seed {seed}, {comps[0]['n']} test rows): AUC {_f(comps[0]['auc_a'])} "
            f"vs {_f(mean)}, {verdict} by {_f(abs(comps[0]['auc_a'] - mean))}. Each: {each}."
        )
    return lines


def _plot_site_bars(results: dict[str, Any], path: Path) -> bool:
    sites = results["sites"]
    methods = [m for m in _method_order(results) if not m.startswith("local:")]
    if len(sites) > 20:  # bars of 50 sites are unreadable; the table holds them
        return False
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(sites) * max(1, len(methods)) / 3), 4))
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(sites))
    for i, method in enumerate(methods):
        stats = [results["summary"][method].get(f"site:{s}", {}).get("auc", {}) for s in sites]
        means = [s.get("mean") if s.get("mean") is not None else np.nan for s in stats]
        sds = [s.get("sd") if s.get("sd") is not None else 0.0 for s in stats]
        ax.bar(x + i * width - 0.4 + width / 2, means, width, yerr=sds, capsize=2, label=method)
    ax.set_xticks(x, sites, rotation=30 if len(sites) > 4 else 0)
    ax.set_ylabel("AUC on the site's own test rows")
    ax.set_ylim(0, 1.05)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("per-site AUC (mean ± sd over repetitions)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_learning(results: dict[str, Any], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, metric in zip(axes, ("auc", "loss"), strict=True):
        series: dict[str, list[list[float | None]]] = {}
        for run in results["runs"]:
            if not run["method"].startswith("local:"):
                series.setdefault(run["method"], []).append(
                    [r["global"].get(metric) for r in run["rounds"]]
                )
        for method, curves in series.items():
            length = min(len(c) for c in curves)
            values = np.array(
                [[np.nan if v is None else v for v in c[:length]] for c in curves], dtype=float
            )
            mean = np.nanmean(values, axis=0)
            xs = np.arange(1, length + 1)
            ax.plot(xs, mean, "-o", ms=3, label=method)
            if len(curves) > 1:
                sd = np.nanstd(values, axis=0)
                ax.fill_between(xs, mean - sd, mean + sd, alpha=0.15)
        ax.set_xlabel("round (local / pooled: every local-epochs epochs)")
        ax.set_title(
            f"global {metric.upper() if metric == 'auc' else metric}, mean over repetitions"
        )
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_roc(results: dict[str, Any], scores: dict[str, Any] | None, path: Path) -> bool:
    if not scores:
        return False
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    for method, (labels, probs) in scores.items():
        if probs.shape[1] != 2 or len(set(labels.tolist())) < 2:
            continue
        fpr, tpr, _ = roc_curve(labels, probs[:, 1])
        auc = results["out_of_fold"].get(method, {})
        first = next(iter(auc.values()), {}).get("auc")
        ax.plot(fpr, tpr, lw=1.6, label=f"{method} (AUC {_f(first)})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title("ROC, out-of-fold test rows (first seed)")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def write_experiment_report(
    results: dict[str, Any],
    out_dir: Path,
    *,
    command: str,
    roc_scores: dict[str, Any] | None = None,
) -> Path:
    """Write ``report.md`` and plots for an experiment; each repetition also gets its own.

    Args:
        results: the top-level results of :func:`simulation.experiment.run_experiment`.
        out_dir: the experiment folder.
        command: the exact command line.
        roc_scores: ``{method: (labels, probs)}`` out-of-fold rows for the ROC plot.
    """
    exp = results["experiment"]
    task = results["task"]
    reps = exp["repetitions"]
    for rep in reps:  # each repetition's own report (methods' tables, learning curves per site)
        rep_dir = out_dir / rep["dir"]
        if rep_dir != out_dir and (rep_dir / "results.json").is_file():
            rep_results = json.loads((rep_dir / "results.json").read_text())
            write_report(rep_results, rep_dir, command=f"{command}  # repetition {rep['dir']}")
    if len(reps) == 1 and reps[0]["dir"] == ".":  # one repetition: the per-run report + tests
        path = write_report(results, out_dir, command=command)
        extra = _answer(results)
        lines = ["", "## The answer", "", *extra, ""] if extra else []
        comp = comparison_lines(results)
        if comp:
            lines += ["## DeLong comparisons (paired, same test rows)", "", *comp, ""]
        bars = out_dir / "site_bars.png"
        if _plot_site_bars(results, bars):
            lines += ["## Per site", "", f"![per-site AUC]({bars.name})", ""]
        with path.open("a") as handle:
            handle.write("\n".join(lines))
        return path
    n = len(reps)
    protocol = (
        f"{exp['folds']}-fold patient-level cross-validation within each site"
        if exp["folds"] > 1
        else "each site's own patient-level train/val/test split"
    )
    lines = [
        f"# fedfusion experiment: {results['scenario']}",
        "",
        f"- task `{task['name']}` (model `{task['model']}`), classes {task['classes']}",
        f"- sites: {', '.join(results['sites'])}",
        f"- protocol: {protocol}; seeds {exp['seeds']}; {n} repetition(s) of every method",
        f"- methods: {', '.join(exp['methods'])}"
        + (
            f"; single-modality variants trained with {exp['single_modality']}"
            if exp.get("single_modality")
            else ""
        ),
        f"- machine: {results['environment'].get('platform', results['environment']['machine'])},"
        f" {results['environment'].get('cpus_available', results['environment']['cpus'])} CPU"
        f" cores available; experiment wall time {exp['wall_seconds'] / 60:.1f} min",
        "",
    ]
    if exp.get("partition"):
        part = exp["partition"]
        lines += [f"- partition: `{json.dumps(part['spec'])}`", ""]
        lines += _table(
            ["site", "patients", "rows", "rows per class", "missing modalities"],
            [
                [
                    s,
                    str(v["patients"]),
                    str(v["rows"]),
                    ", ".join(f"{k} {c}" for k, c in v["labels"].items()),
                    ", ".join(v["missing"]) or "-",
                ]
                for s, v in part["sites"].items()
            ],
        ) + [""]
    answer = _answer(results)
    if answer:
        lines += ["## The answer", "", *answer, ""]
    stat_note = (
        f"Cells: mean ± sd (95% t interval) over the {n} repetitions (folds x seeds)"
        if n > 1
        else "Cells: the single repetition's value"
    )
    lines += [
        "## Methods x metrics: pooled test set",
        "",
        f"{stat_note} (clipped to [0, 1]). Pooled = the union of all sites' test rows. The last",
        "column scores every",
        "patient once (the out-of-fold predictions of all folds; one value per seed) with the",
        "DeLong 95% CI (bootstrap CI for multi-class macro AUC).",
        "",
        *_table(*summary_rows(results, "pooled")),
        "",
        "## Methods x metrics: mean over sites' own test sets",
        "",
        "Each site's metric on its own test rows, averaged over sites (each hospital's view).",
        "",
        *_table(*summary_rows(results, "site-mean")),
        "",
        "## Per site: AUC on the site's own test rows",
        "",
        *_table(*_site_rows(results)),
        "",
    ]
    bars = out_dir / "site_bars.png"
    if _plot_site_bars(results, bars):
        lines += [f"![per-site AUC]({bars.name})", ""]
    comp = comparison_lines(results)
    if comp:
        lines += [
            "## DeLong comparisons (paired, same test rows)",
            "",
            "Every row of the compared set is scored by both models (out-of-fold: each patient by",
            "the models of the fold that held it out). `local` scores each row with its own",
            "site's local model; `local:<site>` is compared on that site's rows only, except in",
            "the `local-only model` rows, where one site's model scores every site's rows.",
            "",
            *comp,
            "",
        ]
    roc = out_dir / "roc.png"
    if _plot_roc(results, roc_scores, roc):
        lines += ["## ROC", "", f"![ROC]({roc.name})", ""]
    curves = out_dir / "learning_curves.png"
    _plot_learning(results, curves)
    lines += ["## Learning curves", "", f"![learning curves]({curves.name})", ""]
    if any(out_dir / r["dir"] != out_dir for r in reps):
        lines += ["## Repetitions", ""]
        lines += [f"- [{r['dir']}]({r['dir']}/report.md)" for r in reps]
        lines.append("")
    lines += [
        "## How these numbers were computed",
        "",
        "Every method trains on the same sites, folds, initial weights (seed) and budget:",
        "num-server-rounds x local-epochs epochs over each training row. Federated metrics come",
        "from the sites' shared score histograms (AUC with binned ties); per-row scores for the",
        "paired DeLong tests and the out-of-fold column come from re-scoring each final model on",
        "each site's test rows after training, which a simulation can do because it holds every",
        "site's rows (FedBN keeps normalisation layers at the sites, so it is not re-scored).",
        "No round or model is selected on test rows. The t interval over repetitions is wide",
        "with few folds; the out-of-fold DeLong interval uses every patient once.",
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
    return path
