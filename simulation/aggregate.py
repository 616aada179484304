"""Aggregate repeated runs (folds x seeds): mean +- sd and 95% CI, out-of-fold metrics, DeLong.

Two views of every method's final models, as in the studies:

* ``pooled``: metrics on the union of all sites' test rows (``final.global``);
* ``site-mean``: the mean over sites of each site's metric on its own test rows;

and ``site:<name>`` for each site's own test rows. The ``local`` row is "each hospital
alone": site s's own model (``local:<s>``) on site s's rows; its pooled view scores every
test row with its own site's model. Values are collected per repetition (one fold of one
seed) and summarised by :func:`models.stats.mean_sd_ci` (t interval over repetitions).

Per-row scores (see :mod:`simulation.scoring`) give, per seed, the out-of-fold predictions
(every patient is tested once across the K folds): exact metrics with DeLong CIs, bootstrap
CIs for multi-class metrics, and DeLong's paired test of two methods on the same rows.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.metrics import ScoreSummary, classification_metrics, summary_metrics
from models.stats import bootstrap_cis, compare_aucs, mean_sd_ci
from simulation.scoring import SiteScores

__all__ = [
    "BINARY_METRICS",
    "MULTICLASS_METRICS",
    "Repetition",
    "comparisons",
    "local_only_comparison",
    "oof_rows",
    "out_of_fold",
    "summarise",
]

BINARY_METRICS = ("auc", "accuracy", "sensitivity", "specificity", "f1")
MULTICLASS_METRICS = ("auc", "accuracy", "macro_f1", "macro_sensitivity")
LOCAL = "local"  # the "each hospital alone" composite


@dataclass
class Repetition:
    """One training of every method: one fold of one seed (fold None = no cross-validation)."""

    seed: int
    fold: int | None
    manifest: Path
    out_dir: Path
    runs: list[dict[str, Any]] = field(default_factory=list)
    scores: dict[str, dict[str, SiteScores]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"seed {self.seed}" + (f" fold {self.fold}" if self.fold is not None else "")


def _value(metrics: dict[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    return float(value) if isinstance(value, int | float) else None


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return sum(kept) / len(kept) if kept else None


def add_local_composite(rep: Repetition, sites: Sequence[str]) -> None:
    """Scores of "each site's own model on its own rows" as the pseudo-method ``local``."""
    own = {s: rep.scores[f"local:{s}"][s] for s in sites if f"local:{s}" in rep.scores}
    if len(own) == len(sites):
        rep.scores[LOCAL] = own


def _pooled_from_scores(scores: dict[str, SiteScores], n_bins: int) -> dict[str, Any]:
    """Metrics on the union of the sites' rows, binned like the federation's global metrics."""
    summaries = [
        ScoreSummary.from_scores(s.labels, s.probs, n_bins=n_bins)
        for s in scores.values()
        if s.labels.size
    ]
    return summary_metrics(sum(summaries[1:], summaries[0])) if summaries else {}


def summarise(
    reps: Sequence[Repetition], sites: Sequence[str], metrics: Sequence[str], *, n_bins: int
) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """``{method: {view: {metric: {mean, sd, ci, n}}}}`` over the repetitions."""
    values: dict[str, dict[str, dict[str, list[float | None]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for rep in reps:
        by_method = {run["method"]: run for run in rep.runs}
        for method, run in by_method.items():
            final = run["final"]
            for m in metrics:
                values[method]["pooled"][m].append(_value(final["global"], m))
                site_values = [_value(final["sites"].get(s, {}), m) for s in sites]
                values[method]["site-mean"][m].append(_mean(site_values))
                for s, v in zip(sites, site_values, strict=True):
                    values[method][f"site:{s}"][m].append(v)
        own = [by_method.get(f"local:{s}") for s in sites]
        if all(own):
            pooled = _pooled_from_scores(rep.scores[LOCAL], n_bins) if LOCAL in rep.scores else {}
            for m in metrics:
                site_values = [
                    _value(run["final"]["sites"][s], m)  # type: ignore[index]
                    for s, run in zip(sites, own, strict=True)
                ]
                values[LOCAL]["site-mean"][m].append(_mean(site_values))
                values[LOCAL]["pooled"][m].append(_value(pooled, m) if pooled else None)
                for s, v in zip(sites, site_values, strict=True):
                    values[LOCAL][f"site:{s}"][m].append(v)
    return {
        method: {
            view: {m: mean_sd_ci(v).to_dict() for m, v in per_metric.items()}
            for view, per_metric in views.items()
        }
        for method, views in values.items()
    }


def oof_rows(
    reps: Sequence[Repetition], method: str, seed: int, sites: Sequence[str]
) -> tuple[np.ndarray, np.ndarray] | None:
    """Out-of-fold rows of ``sites`` for one seed: labels (N,), probs (N, K); folds in order."""
    labels, probs = [], []
    for rep in reps:
        if rep.seed != seed:
            continue
        scores = rep.scores.get(method)
        if scores is None:
            return None
        for site in sites:
            if scores[site].labels.size:
                labels.append(scores[site].labels)
                probs.append(scores[site].probs)
    if not labels:
        return None
    return np.concatenate(labels), np.concatenate(probs)


def out_of_fold(
    reps: Sequence[Repetition], sites: Sequence[str], *, bootstrap: int = 1000
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{method: {seed: metrics}}`` on every site's test rows of every fold (exact scores).

    Binary tasks give the AUC with its DeLong CI; multi-class tasks add ``bootstrap_ci``
    (stratified percentile bootstrap) for macro AUC, accuracy and macro F1.
    """
    out: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    methods = sorted({m for rep in reps for m in rep.scores})
    for method in methods:
        for seed in sorted({rep.seed for rep in reps}):
            rows = oof_rows(reps, method, seed, sites)
            if rows is None:
                continue
            labels, probs = rows
            metrics = classification_metrics(labels, probs)
            if probs.shape[1] > 2 and bootstrap:
                cis = bootstrap_cis(labels, probs, n_resamples=bootstrap, seed=seed)
                metrics["bootstrap_ci"] = {k: list(v) for k, v in cis.items()}  # type: ignore[assignment]
            out[method][str(seed)] = metrics
    return dict(out)


def _compare(
    reps: Sequence[Repetition],
    a: str,
    b: str,
    sites: Sequence[str],
    seed: int,
    what: str,
    rows: str,
) -> dict[str, Any] | None:
    first, second = oof_rows(reps, a, seed, sites), oof_rows(reps, b, seed, sites)
    if first is None or second is None or not np.array_equal(first[0], second[0]):
        return None
    result = compare_aucs(first[0], first[1][:, 1], second[1][:, 1])
    return {"comparison": what, "a": a, "b": b, "rows": rows, "seed": seed, **result.to_dict()}


def local_only_comparison(reference: str) -> str:
    """The name of the comparisons of ``reference`` with one site's model on every site's rows."""
    return f"{reference} vs local-only model"


def comparisons(
    reps: Sequence[Repetition], sites: Sequence[str], *, reference: str
) -> list[dict[str, Any]]:
    """DeLong tests on out-of-fold rows, per seed (binary tasks only).

    - ``federated vs local``: ``reference`` (e.g. fedavg) against each hospital's own model:
      on all sites' rows (every row scored by its own site's local model) and on each site's;
    - ``federated vs local-only model``: ``reference`` against each site's local model on
      every site's rows (a model trained at one hospital, used everywhere; their mean is
      "the mean of the local-only models");
    - ``fused vs single modality``: ``reference`` against ``reference[<modality>]`` for each
      single-modality variant, and against the best of them (highest out-of-fold AUC).
    """
    out: list[dict[str, Any]] = []
    methods = {m for rep in reps for m in rep.scores}
    if reference not in methods:
        return out
    some = next(iter(reps[0].scores.values()))
    if next(iter(some.values())).probs.shape[1] != 2:
        return out
    singles = sorted(m for m in methods if m.startswith(f"{reference}["))
    for seed in sorted({rep.seed for rep in reps}):
        if LOCAL in methods:
            what = f"{reference} vs local"
            out.append(_compare(reps, reference, LOCAL, sites, seed, what, "all sites"))
            for site in sites:
                out.append(_compare(reps, reference, f"local:{site}", [site], seed, what, site))
            for site in sites:
                everywhere = local_only_comparison(reference)
                out.append(
                    _compare(reps, reference, f"local:{site}", sites, seed, everywhere, "all sites")
                )
        aucs = {}
        for single in singles:
            rows = oof_rows(reps, single, seed, sites)
            if rows is not None:
                aucs[single] = classification_metrics(*rows)["auc"]
            out.append(
                _compare(reps, reference, single, sites, seed, "fused vs single", "all sites")
            )
        if aucs:
            best = max(aucs, key=lambda m: -1.0 if math.isnan(aucs[m]) else aucs[m])  # type: ignore[arg-type]
            out.append(
                _compare(reps, reference, best, sites, seed, "fused vs best single", "all sites")
            )
    return [c for c in out if c is not None]
