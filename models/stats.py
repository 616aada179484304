"""Statistics for comparing models: paired DeLong test, bootstrap CIs, mean +- sd over folds.

* :func:`compare_aucs`: DeLong's test of two correlated ROC AUCs measured on the same test
  rows (the studies' "P value" of fused vs single-modality, federated vs local). The
  structural components come from the fast midrank algorithm (Sun & Xu 2014) in
  :mod:`models.metrics`; this adds the AUCs, their difference and its confidence interval.
* :func:`bootstrap_cis`: percentile bootstrap intervals of multi-class metrics (macro AUC,
  accuracy, macro F1, ...) by :func:`scipy.stats.bootstrap`, resampling rows within each
  true class so that every resample keeps every class (a stratified bootstrap).
* :func:`mean_sd_ci`: mean, sample sd and the t-based 95% interval of the mean over folds or
  seeds (:func:`scipy.stats.t.interval`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from models.metrics import (
    MetricsInputError,
    _as_probs,
    _as_scores,
    _binary_labels,
    _delong_components,
    _delong_variance,
    classification_metrics,
)

__all__ = ["AucComparison", "MeanCI", "bootstrap_cis", "compare_aucs", "mean_sd_ci"]


@dataclass(frozen=True)
class AucComparison:
    """DeLong's paired comparison of classifier A against B on the same rows.

    ``diff = auc_a - auc_b`` (positive when A is better); ``ci`` is the normal interval of the
    difference; ``p`` the two-sided P value. nan where the variance is undefined.
    """

    auc_a: float
    auc_b: float
    diff: float
    ci: tuple[float, float]
    z: float
    p: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "auc_a": self.auc_a,
            "auc_b": self.auc_b,
            "diff": self.diff,
            "diff_ci": list(self.ci),
            "z": self.z,
            "p": self.p,
            "n": self.n,
        }


def compare_aucs(
    y_true: Any, scores_a: Any, scores_b: Any, *, alpha: float = 0.05
) -> AucComparison:
    """DeLong's test for two correlated AUCs (fast DeLong; ties count half).

    Args:
        y_true: binary labels, shape (N,), 1 = positive.
        scores_a: classifier A's scores of the positive class, shape (N,).
        scores_b: classifier B's scores of the same rows, shape (N,).
        alpha: one minus the coverage of the difference's interval. Default 0.05.

    Returns:
        An :class:`AucComparison`. Identical scores give ``z = 0, p = 1``; a difference with
        zero variance gives ``p = 0``; fewer than two positives or negatives give nan.
    """
    if not 0 < alpha < 1:
        raise MetricsInputError(f"alpha must be in (0, 1), got {alpha}")
    is_pos = _binary_labels(y_true)
    a = _as_scores(scores_a, is_pos.size, "scores_a")
    b = _as_scores(scores_b, is_pos.size, "scores_b")
    n = int(is_pos.size)
    if is_pos.sum() < 2 or (~is_pos).sum() < 2:
        nan = math.nan
        return AucComparison(nan, nan, nan, (nan, nan), nan, nan, n)
    both = np.stack([a, b])
    auc, v10, v01 = _delong_components(both[:, is_pos], both[:, ~is_pos])
    diff = float(auc[0] - auc[1])
    # Var(A - B) = Var(A) + Var(B) - 2 Cov(A, B), on the paired structural components.
    var = float(_delong_variance(v10[:1] - v10[1:], v01[:1] - v01[1:])[0])
    half = float(stats.norm.ppf(1 - alpha / 2)) * math.sqrt(max(var, 0.0))
    if var <= 0.0:
        z, p = (0.0, 1.0) if diff == 0.0 else (math.copysign(math.inf, diff), 0.0)
    else:
        z = diff / math.sqrt(var)
        p = float(2.0 * stats.norm.sf(abs(z)))
    return AucComparison(float(auc[0]), float(auc[1]), diff, (diff - half, diff + half), z, p, n)


def bootstrap_cis(
    y_true: Any,
    probs: Any,
    *,
    metrics: Sequence[str] = ("auc", "accuracy", "macro_f1"),
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of metrics of :func:`~models.metrics.classification_metrics`.

    Rows are resampled with replacement within each true class (scipy's independent
    resampling of one sample per class), so class proportions stay fixed and every class is
    present in every resample; each metric is computed on each resample.

    Args:
        y_true: class indices, shape (N,).
        probs: class probabilities, shape (N, K).
        metrics: keys of the metric dictionary (``auc`` is the macro one-vs-rest AUC when
            K > 2; ``f1`` is the binary F1, ``macro_f1`` the multi-class one).
        n_resamples: bootstrap resamples. Default 1000.
        confidence: coverage. Default 0.95.
        seed: random seed. Default 0.

    Returns:
        ``{metric: (low, high)}``; ``(nan, nan)`` when the metric is undefined on the data.
    """
    y, p = _as_probs(y_true, probs)
    point = classification_metrics(y, p)
    unknown = [m for m in metrics if m not in point]
    if unknown:
        raise MetricsInputError(
            f"unknown metric(s) {unknown} for K = {p.shape[1]}; available: "
            + ", ".join(k for k, v in point.items() if isinstance(v, float))
        )
    groups = tuple(np.flatnonzero(y == c) for c in np.unique(y))
    out: dict[str, tuple[float, float]] = {}
    if len(y) < 2:
        return {m: (math.nan, math.nan) for m in metrics}

    def _statistic(*index_groups: np.ndarray) -> np.ndarray:
        rows = np.concatenate(index_groups).astype(np.int64)
        values = classification_metrics(y[rows], p[rows])
        return np.array([float(values[m]) for m in metrics])  # type: ignore[arg-type]

    result = stats.bootstrap(
        groups,
        _statistic,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        vectorized=False,
        paired=False,
        rng=np.random.default_rng(seed),
    )
    low, high = result.confidence_interval
    for i, name in enumerate(metrics):
        out[name] = (float(low[i]), float(high[i]))
    return out


@dataclass(frozen=True)
class MeanCI:
    """Mean, sample sd (ddof 1) and t-based interval of the mean of ``n`` values."""

    mean: float
    sd: float
    ci: tuple[float, float]
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "sd": self.sd, "ci": list(self.ci), "n": self.n}


def mean_sd_ci(values: Sequence[float | None], *, confidence: float = 0.95) -> MeanCI:
    """Mean +- sd with the t-based interval ``mean +- t_{n-1} sd / sqrt(n)``.

    ``None`` and nan values are left out (an undefined metric in one fold); with one value
    the sd and interval are nan, with none everything is nan.
    """
    if not 0 < confidence < 1:
        raise MetricsInputError(f"confidence must be in (0, 1), got {confidence}")
    kept = np.array([float(v) for v in values if v is not None and not math.isnan(float(v))])
    n = int(kept.size)
    if n == 0:
        return MeanCI(math.nan, math.nan, (math.nan, math.nan), 0)
    mean = float(kept.mean())
    if n == 1:
        return MeanCI(mean, math.nan, (math.nan, math.nan), 1)
    sd = float(kept.std(ddof=1))
    if sd == 0.0:
        return MeanCI(mean, 0.0, (mean, mean), n)
    low, high = stats.t.interval(confidence, df=n - 1, loc=mean, scale=stats.sem(kept))
    return MeanCI(mean, sd, (float(low), float(high)), n)
