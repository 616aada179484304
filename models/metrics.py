"""Clinical classification metrics: exactly from scores, or from summaries sites may share.

Two paths give the same metric dictionary:

* **Exact** (:func:`classification_metrics`): on a site, or in pooled simulation, where the
  per-sample scores are at hand.
* **From summaries** (:func:`summary_metrics`): sites may not send per-patient scores, so each
  sends a :class:`ScoreSummary` (per-class score histograms, a confusion matrix, a loss sum and a
  count) as a flat Flower ``MetricRecord`` (:meth:`ScoreSummary.to_record`). Summaries of
  sites add up (``a + b``, or ``sum(summaries)``) to the summary of the union of their data.

Metric keys (stable; ``<k>`` is the integer class index):

=========================  ======  =====================================================
key                        type    meaning
=========================  ======  =====================================================
Binary tasks (K = 2)
``n``                      int     number of samples
``auc``                    float   ROC AUC of ``probs[:, positive]`` (ties count half)
``auc_ci``                 list    ``[low, high]`` 95% DeLong interval (see below)
``accuracy``               float   correct / n
``sensitivity``            float   TP / (TP + FN), recall of the positive class
``specificity``            float   TN / (TN + FP)
``ppv``                    float   TP / (TP + FP), precision
``npv``                    float   TN / (TN + FN)
``f1``                     float   2TP / (2TP + FP + FN)
``confusion``              list    (K, K) nested list, rows true class, columns predicted
Multi-class tasks (K > 2)
``n``                      int     number of samples
``auc``                    float   macro one-vs-rest AUC (mean of ``auc_<k>``)
``auc_<k>``                float   one-vs-rest AUC of class k scored by ``probs[:, k]``
``auc_ci_<k>``             list    95% DeLong interval of ``auc_<k>``
``accuracy``               float   correct / n
``sensitivity_<k>``        float   recall of class k
``macro_sensitivity``      float   mean of the per-class recalls
``macro_ppv``              float   mean of the per-class precisions
``macro_f1``               float   mean of the per-class F1 scores
``confusion``              list    (K, K) nested list, rows true class, columns predicted
From summaries, also
``loss``                   float   ``loss_sum / n``
=========================  ======  =====================================================

Conventions:

* Predictions are ``argmax(probs, axis=1)`` (ties go to the lower class index); a binary task
  may instead pass ``threshold`` to :func:`classification_metrics` (positive when
  ``probs[:, positive] >= threshold``). Summaries always hold argmax confusion counts.
* Undefined values never raise: a ratio with a zero denominator (a site with no positives has
  no sensitivity), an AUC without both classes, or a DeLong variance with fewer than two
  samples in either class is ``float('nan')``; no warning is emitted either. Macro averages
  leave out the classes whose value is undefined (as scikit-learn does with
  ``zero_division=np.nan``) and are nan only when every class is undefined.
* The AUC interval is the plain DeLong normal interval ``auc +/- z * sqrt(var)`` clipped to
  ``[0, 1]`` (no logit transform). It has zero width under perfect separation.
* The multi-class macro ``auc`` has no interval: the per-class AUCs share samples, so their
  covariance needs each sample's scores for all classes jointly, which the shared histograms do
  not hold. Per-class intervals are given instead.
* From summaries, scores in the same histogram bin count as tied. With the DeLong variance
  computed on the bins, ``summary_metrics`` then equals :func:`classification_metrics` on
  the scores replaced by their bin index; with 50 bins the AUC is typically within 0.01 of the
  exact one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import norm, rankdata

from models.seg_metrics import SegmentationSums

__all__ = [
    "MetricsInputError",
    "MetricValue",
    "ScoreSummary",
    "classification_metrics",
    "delong_auc_variance",
    "delong_ci",
    "delong_test",
    "roc_curve_from_summary",
    "summary_auc_variance",
    "summary_metrics",
]

MetricValue = int | float | list[float] | list[list[int]]
"""A value of a metric dictionary (see the module docstring for the keys)."""

_CI_ALPHA = 0.05
_PROB_TOLERANCE = 1e-6
_RECORD_FIELDS = ("shape", "hist", "confusion", "loss-sum", "n")


class MetricsInputError(ValueError):
    """Bad input to a metric function, or a malformed :class:`ScoreSummary` record."""


# --------------------------------------------------------------------------- validation


def _as_labels(y_true: Any, *, num_classes: int | None = None, name: str = "y_true") -> np.ndarray:
    """Return ``y_true`` as a 1-D int64 array, checking values are class indices."""
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise MetricsInputError(f"{name} must be 1-D (N,), got shape {y.shape}")
    if y.dtype.kind == "b":
        y = y.astype(np.int64)
    elif y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise MetricsInputError(f"{name} must hold integer class indices, got non-integers")
        y = y.astype(np.int64)
    elif y.dtype.kind not in "iu":
        raise MetricsInputError(f"{name} must hold integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64, copy=False)
    if num_classes is not None and y.size and (y.min() < 0 or y.max() >= num_classes):
        raise MetricsInputError(
            f"{name} must hold class indices in [0, {num_classes - 1}], "
            f"got values from {y.min()} to {y.max()}"
        )
    return y


def _as_scores(scores: Any, n: int, name: str) -> np.ndarray:
    """Return ``scores`` as a finite 1-D float64 array of length ``n``."""
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != (n,):
        raise MetricsInputError(f"{name} must have shape ({n},) like y_true, got {s.shape}")
    if not np.all(np.isfinite(s)):
        raise MetricsInputError(f"{name} must be finite, got NaN or inf")
    return s


def _as_probs(y_true: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``(y_true (N,), probs (N, K))`` and return them as int64 / float64 arrays."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise MetricsInputError(f"probs must have shape (N, K) with K >= 2, got {p.shape}")
    if not np.all(np.isfinite(p)):
        raise MetricsInputError("probs must be finite, got NaN or inf")
    y = _as_labels(y_true, num_classes=p.shape[1])
    if y.shape[0] != p.shape[0]:
        raise MetricsInputError(
            f"y_true and probs must have the same N, got {y.shape[0]} and {p.shape[0]}"
        )
    return y, p


def _check_positive(positive: int, num_classes: int) -> None:
    if num_classes == 2 and positive not in (0, 1):
        raise MetricsInputError(f"positive must be 0 or 1 for a binary task, got {positive}")
    if not 0 <= positive < num_classes:
        raise MetricsInputError(f"positive must be in [0, {num_classes - 1}], got {positive}")


def _binary_labels(y_true: Any) -> np.ndarray:
    """Return a boolean positive mask from 0/1 labels."""
    y = _as_labels(y_true)
    if y.size and (y.min() < 0 or y.max() > 1):
        raise MetricsInputError(
            f"y_true must hold binary labels 0/1, got values from {y.min()} to {y.max()}"
        )
    return y == 1


# --------------------------------------------------------------------------- small helpers


def _safe_div(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    """Elementwise ``num / den`` with nan where ``den == 0`` (no warnings)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _nan_mean(values: np.ndarray) -> float:
    """Mean over the non-nan values; nan when there are none (no warnings)."""
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else math.nan


def _normal_ci(auc: float, var: float, alpha: float) -> tuple[float, float]:
    """Plain normal interval ``auc +/- z sqrt(var)`` clipped to [0, 1]; nan when undefined."""
    if math.isnan(auc) or math.isnan(var):
        return math.nan, math.nan
    half = float(norm.ppf(1.0 - alpha / 2.0)) * math.sqrt(max(var, 0.0))
    return max(0.0, auc - half), min(1.0, auc + half)


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise MetricsInputError(f"alpha must be in (0, 1), got {alpha}")


# --------------------------------------------------------------------------- DeLong (exact)


def _delong_components(
    pos: np.ndarray, neg: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Structural components by the fast midrank algorithm (Sun & Xu 2014).

    Args:
        pos: scores of the positives, shape (R, m), one row per classifier.
        neg: scores of the negatives, shape (R, n).

    Returns:
        ``(auc (R,), v10 (R, m), v01 (R, n))`` where ``v10[r, i]`` is the fraction of negatives
        scored below positive ``i`` and ``v01[r, j]`` the fraction of positives scored above
        negative ``j``, ties counting half. Requires ``m, n >= 1``.
    """
    m, n = pos.shape[1], neg.shape[1]
    tx = rankdata(pos, method="average", axis=1)
    ty = rankdata(neg, method="average", axis=1)
    tz = rankdata(np.concatenate([pos, neg], axis=1), method="average", axis=1)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    return v10.mean(axis=1), v10, v01


def _delong_variance(v10: np.ndarray, v01: np.ndarray) -> np.ndarray:
    """DeLong variance ``S10 / m + S01 / n`` per row; nan when m or n < 2. Shapes (R, m), (R, n)."""
    m, n = v10.shape[1], v01.shape[1]
    if m < 2 or n < 2:
        return np.full(v10.shape[0], np.nan)
    return v10.var(axis=1, ddof=1) / m + v01.var(axis=1, ddof=1) / n


def _exact_auc_var(is_pos: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """AUC and DeLong variance of one classifier; nan when a class is missing."""
    pos, neg = scores[is_pos], scores[~is_pos]
    if pos.size == 0 or neg.size == 0:
        return math.nan, math.nan
    auc, v10, v01 = _delong_components(pos[None, :], neg[None, :])
    return float(auc[0]), float(_delong_variance(v10, v01)[0])


def delong_auc_variance(y_true: Any, scores: Any) -> tuple[float, float]:
    """ROC AUC and its DeLong variance, by the fast midrank algorithm (Sun & Xu 2014).

    Ties between a positive and a negative count half (the same AUC as
    ``sklearn.metrics.roc_auc_score``).

    Args:
        y_true: binary labels, shape (N,), 1 = positive.
        scores: higher means more likely positive, shape (N,).

    Returns:
        ``(auc, variance)``; auc is nan without both classes, the variance is nan with fewer
        than two positives or two negatives.
    """
    is_pos = _binary_labels(y_true)
    return _exact_auc_var(is_pos, _as_scores(scores, is_pos.size, "scores"))


def delong_ci(y_true: Any, scores: Any, alpha: float = _CI_ALPHA) -> tuple[float, float, float]:
    """ROC AUC with a ``1 - alpha`` DeLong confidence interval.

    The interval is the plain normal one, ``auc +/- z_{1-alpha/2} * sqrt(var)``, clipped to
    [0, 1] (no logit transform).

    Args:
        y_true: binary labels, shape (N,), 1 = positive.
        scores: higher means more likely positive, shape (N,).
        alpha: one minus the coverage, default 0.05 (a 95% interval).

    Returns:
        ``(auc, low, high)``; the bounds are nan where the variance is (see
        :func:`delong_auc_variance`).
    """
    _check_alpha(alpha)
    auc, var = delong_auc_variance(y_true, scores)
    low, high = _normal_ci(auc, var, alpha)
    return auc, low, high


def delong_test(y_true: Any, scores_a: Any, scores_b: Any) -> tuple[float, float]:
    """DeLong's test for two correlated ROC AUCs measured on the same samples.

    Args:
        y_true: binary labels, shape (N,), 1 = positive.
        scores_a: scores of classifier A, shape (N,).
        scores_b: scores of classifier B on the same samples, shape (N,).

    Returns:
        ``(z, p)``: ``z = (auc_a - auc_b) / sd(auc_a - auc_b)`` (positive when A is better) and
        the two-sided p-value. Identical curves (zero variance, equal AUCs) give ``(0.0, 1.0)``;
        zero variance with different AUCs gives ``(+/-inf, 0.0)``; fewer than two positives or
        negatives give ``(nan, nan)``.
    """
    is_pos = _binary_labels(y_true)
    a = _as_scores(scores_a, is_pos.size, "scores_a")
    b = _as_scores(scores_b, is_pos.size, "scores_b")
    if is_pos.sum() < 2 or (~is_pos).sum() < 2:
        return math.nan, math.nan
    both = np.stack([a, b])
    auc, v10, v01 = _delong_components(both[:, is_pos], both[:, ~is_pos])
    diff = float(auc[0] - auc[1])
    # Var(A - B) = Var(A) + Var(B) - 2 Cov(A, B), taken directly on the paired differences.
    var = float(_delong_variance(v10[:1] - v10[1:], v01[:1] - v01[1:])[0])
    if var <= 0.0:
        if diff == 0.0:
            return 0.0, 1.0
        return math.copysign(math.inf, diff), 0.0
    z = diff / math.sqrt(var)
    return z, float(2.0 * norm.sf(abs(z)))


# --------------------------------------------------------------------------- metric assembly


def _confusion(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """(K, K) int64 counts, rows true class, columns predicted class."""
    return np.bincount(y * k + pred, minlength=k * k).reshape(k, k).astype(np.int64)


def _assemble(
    confusion: np.ndarray, auc: np.ndarray, var: np.ndarray, positive: int
) -> dict[str, MetricValue]:
    """Build the metric dictionary.

    Args:
        confusion: (K, K) counts, rows true, columns predicted.
        auc: (K,) one-vs-rest AUC of each class (only ``positive`` is read when K = 2).
        var: (K,) DeLong variance of each entry of ``auc``.
        positive: the positive class of a binary task.
    """
    k = confusion.shape[0]
    n = int(confusion.sum())
    out: dict[str, MetricValue] = {"n": n}
    accuracy = float(_safe_div(np.trace(confusion), n))
    if k == 2:
        neg = 1 - positive
        tp, fn = confusion[positive, positive], confusion[positive, neg]
        fp, tn = confusion[neg, positive], confusion[neg, neg]
        out["auc"] = float(auc[positive])
        out["auc_ci"] = list(_normal_ci(float(auc[positive]), float(var[positive]), _CI_ALPHA))
        out["accuracy"] = accuracy
        out["sensitivity"] = float(_safe_div(tp, tp + fn))
        out["specificity"] = float(_safe_div(tn, tn + fp))
        out["ppv"] = float(_safe_div(tp, tp + fp))
        out["npv"] = float(_safe_div(tn, tn + fn))
        out["f1"] = float(_safe_div(2 * tp, 2 * tp + fp + fn))
    else:
        tp = np.diag(confusion)
        support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
        recall = _safe_div(tp, support)
        precision = _safe_div(tp, predicted)
        f1 = _safe_div(2 * tp, support + predicted)
        out["auc"] = _nan_mean(np.asarray(auc, dtype=np.float64))
        for c in range(k):
            out[f"auc_{c}"] = float(auc[c])
            out[f"auc_ci_{c}"] = list(_normal_ci(float(auc[c]), float(var[c]), _CI_ALPHA))
        out["accuracy"] = accuracy
        for c in range(k):
            out[f"sensitivity_{c}"] = float(recall[c])
        out["macro_sensitivity"] = _nan_mean(recall)
        out["macro_ppv"] = _nan_mean(precision)
        out["macro_f1"] = _nan_mean(f1)
    out["confusion"] = confusion.tolist()
    return out


def classification_metrics(
    y_true: Any, probs: Any, *, positive: int = 1, threshold: float | None = None
) -> dict[str, MetricValue]:
    """Exact clinical metrics from per-sample class probabilities.

    Keys are listed in the module docstring (binary when K = 2, multi-class when K > 2).
    Undefined values (no positives, no predicted positives, ...) are nan; this never raises
    for that.

    Args:
        y_true: true class indices, shape (N,), values in [0, K).
        probs: class probabilities (or any scores ranking samples per class), shape (N, K),
            K >= 2.
        positive: the positive class of a binary task, default 1; ignored when K > 2.
        threshold: binary tasks only: predict positive when ``probs[:, positive] >= threshold``
            instead of by argmax. Default None (argmax). The AUC does not depend on it.

    Returns:
        Metric name -> value.
    """
    y, p = _as_probs(y_true, probs)
    k = p.shape[1]
    if k == 2:
        _check_positive(positive, k)
    if threshold is not None:
        if k != 2:
            raise MetricsInputError(f"threshold is only defined for binary tasks, got K = {k}")
        if not math.isfinite(threshold):
            raise MetricsInputError(f"threshold must be finite, got {threshold}")
        pred = np.where(p[:, positive] >= threshold, positive, 1 - positive)
    else:
        pred = p.argmax(axis=1) if p.shape[0] else np.zeros(0, dtype=np.int64)
    auc = np.full(k, np.nan)
    var = np.full(k, np.nan)
    for c in [positive] if k == 2 else range(k):
        auc[c], var[c] = _exact_auc_var(y == c, p[:, c])
    return _assemble(_confusion(y, pred, k), auc, var, positive)


# --------------------------------------------------------------------------- shared summaries


def _summary_problems(
    hist: np.ndarray, confusion: np.ndarray, loss_sum: float, n: int, names: Mapping[str, str]
) -> list[str]:
    """Every inconsistency of the fields of a summary; ``names`` maps field -> name to report."""
    problems: list[str] = []
    if hist.ndim != 3 or hist.shape[0] != hist.shape[1] or hist.shape[0] < 2 or hist.shape[2] < 1:
        problems.append(
            f"{names['hist']}: expected shape (K, K, B) with K >= 2 and B >= 1, got {hist.shape}"
        )
        return problems
    k = hist.shape[0]
    if confusion.shape != (k, k):
        problems.append(f"{names['confusion']}: expected shape ({k}, {k}), got {confusion.shape}")
    if np.any(hist < 0):
        problems.append(f"{names['hist']}: counts must be >= 0, got {int(hist.min())}")
    if np.any(confusion < 0):
        problems.append(f"{names['confusion']}: counts must be >= 0, got {int(confusion.min())}")
    if not math.isfinite(loss_sum):
        problems.append(f"{names['loss_sum']}: expected a finite number, got {loss_sum}")
    if n < 0:
        problems.append(f"{names['n']}: expected a count >= 0, got {n}")
    if problems:
        return problems
    per_scored = hist.sum(axis=2)  # (K_true, K_scored): each sample counted once per scored class
    if np.any(per_scored != per_scored[:, :1]):
        bad = int(np.flatnonzero(np.any(per_scored != per_scored[:, :1], axis=1))[0])
        problems.append(
            f"{names['hist']}: true class {bad} has different totals per scored class "
            f"{per_scored[bad].tolist()}; each sample must be counted once per scored class"
        )
    elif np.any(per_scored[:, 0] != confusion.sum(axis=1)):
        problems.append(
            f"{names['confusion']}: row totals {confusion.sum(axis=1).tolist()} must equal the "
            f"per-class sample counts of {names['hist']} {per_scored[:, 0].tolist()}"
        )
    if n != int(confusion.sum()):
        problems.append(f"{names['n']}: expected {int(confusion.sum())} (the total count), got {n}")
    return problems


_FIELD_NAMES = {"hist": "hist", "confusion": "confusion", "loss_sum": "loss_sum", "n": "n"}


@dataclass(frozen=True, eq=False)
class ScoreSummary:
    """What a site may share about its predictions: score histograms and confusion counts.

    No per-sample data: for K classes and B equal-width bins over [0, 1] (bin ``b`` holds
    scores in ``[b/B, (b+1)/B)``, the last bin also holds 1.0).

    Args:
        hist: int64, shape (K, K, B): ``hist[t, s, b]`` counts samples of true class ``t``
            whose predicted probability of class ``s`` falls in bin ``b``.
        confusion: int64, shape (K, K), rows true class, columns argmax-predicted class.
        loss_sum: sum of the per-sample losses (``loss_sum / n`` is the mean loss).
        n: number of samples.
        segmentation: per-image Dice / IoU sums of a segmentation model
            (:class:`models.seg_metrics.SegmentationSums`); None for classification models.
            Adds ``dice`` and ``iou`` to :func:`summary_metrics`.

    Raises:
        MetricsInputError: when the fields are inconsistent (shapes, negative counts, totals).
    """

    hist: np.ndarray
    confusion: np.ndarray
    loss_sum: float
    n: int
    segmentation: SegmentationSums | None = None

    def __post_init__(self) -> None:
        hist = np.array(self.hist, dtype=np.int64)
        confusion = np.array(self.confusion, dtype=np.int64)
        loss_sum, n = float(self.loss_sum), int(self.n)
        problems = _summary_problems(hist, confusion, loss_sum, n, _FIELD_NAMES)
        if problems:
            raise MetricsInputError("invalid ScoreSummary: " + "; ".join(problems))
        hist.flags.writeable = False
        confusion.flags.writeable = False
        object.__setattr__(self, "hist", hist)
        object.__setattr__(self, "confusion", confusion)
        object.__setattr__(self, "loss_sum", loss_sum)
        object.__setattr__(self, "n", n)

    @property
    def num_classes(self) -> int:
        """K, the number of classes."""
        return int(self.hist.shape[0])

    @property
    def n_bins(self) -> int:
        """B, the number of score bins over [0, 1]."""
        return int(self.hist.shape[2])

    @property
    def bin_edges(self) -> np.ndarray:
        """Bin edges, shape (B + 1,), from 0 to 1."""
        return np.linspace(0.0, 1.0, self.n_bins + 1)

    @classmethod
    def empty(cls, num_classes: int, n_bins: int = 50) -> ScoreSummary:
        """A summary of no samples (the neutral element of ``+``).

        Args:
            num_classes: K >= 2.
            n_bins: B >= 1, default 50.
        """
        _check_bins(n_bins)
        if num_classes < 2:
            raise MetricsInputError(f"num_classes must be >= 2, got {num_classes}")
        return cls(
            hist=np.zeros((num_classes, num_classes, n_bins), dtype=np.int64),
            confusion=np.zeros((num_classes, num_classes), dtype=np.int64),
            loss_sum=0.0,
            n=0,
        )

    @classmethod
    def from_scores(
        cls, y_true: Any, probs: Any, *, n_bins: int = 50, loss_sum: float = 0.0
    ) -> ScoreSummary:
        """Summarise one site's predictions.

        Args:
            y_true: true class indices, shape (N,).
            probs: class probabilities in [0, 1], shape (N, K); values outside by at most
                1e-6 (float round-off) are clipped.
            n_bins: B >= 1 equal-width bins over [0, 1], default 50.
            loss_sum: sum of the per-sample losses over the same samples, default 0.0.
        """
        _check_bins(n_bins)
        y, p = _as_probs(y_true, probs)
        if p.size and (p.min() < -_PROB_TOLERANCE or p.max() > 1.0 + _PROB_TOLERANCE):
            raise MetricsInputError(
                f"probs must be probabilities in [0, 1], got values from {p.min():.6g} to "
                f"{p.max():.6g} (apply softmax to logits first)"
            )
        k = p.shape[1]
        bins = np.clip(np.floor(np.clip(p, 0.0, 1.0) * n_bins), 0, n_bins - 1).astype(np.int64)
        flat = (y[:, None] * k + np.arange(k)[None, :]) * n_bins + bins
        hist = np.bincount(flat.ravel(), minlength=k * k * n_bins).reshape(k, k, n_bins)
        pred = p.argmax(axis=1) if p.shape[0] else np.zeros(0, dtype=np.int64)
        return cls(hist=hist, confusion=_confusion(y, pred, k), loss_sum=loss_sum, n=y.size)

    def __add__(self, other: ScoreSummary) -> ScoreSummary:
        """The summary of the union of both summaries' samples."""
        if not isinstance(other, ScoreSummary):
            return NotImplemented
        if other.hist.shape != self.hist.shape:
            raise MetricsInputError(
                "cannot add ScoreSummary objects of different shapes: (K, K, B) = "
                f"{self.hist.shape} and {other.hist.shape}; every site must use the same "
                "classes and number of bins"
            )
        if self.segmentation is None or other.segmentation is None:
            segmentation = self.segmentation or other.segmentation
        else:
            segmentation = self.segmentation + other.segmentation
        return ScoreSummary(
            hist=self.hist + other.hist,
            confusion=self.confusion + other.confusion,
            loss_sum=self.loss_sum + other.loss_sum,
            n=self.n + other.n,
            segmentation=segmentation,
        )

    def __radd__(self, other: object) -> ScoreSummary:
        """Let ``sum(summaries)`` start from 0."""
        if isinstance(other, int) and other == 0:
            return self
        return NotImplemented

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ScoreSummary):
            return NotImplemented
        return (
            self.hist.shape == other.hist.shape
            and bool(np.array_equal(self.hist, other.hist))
            and bool(np.array_equal(self.confusion, other.confusion))
            and self.loss_sum == other.loss_sum
            and self.n == other.n
            and self.segmentation == other.segmentation
        )

    __hash__ = None  # type: ignore[assignment]

    def to_record(self, *, prefix: str = "summary") -> dict[str, int | float | list[int]]:
        """Flat values for a Flower ``MetricRecord`` (only int, float and list[int]).

        Keys: ``<prefix>-shape`` ``[K, B]``, ``<prefix>-hist`` (K*K*B counts, C order of
        ``hist``), ``<prefix>-confusion`` (K*K counts, row-major), ``<prefix>-loss-sum``,
        ``<prefix>-n``.

        These are counts to be *summed* over sites: Flower's default metric aggregation
        (a weighted average) must not be applied to them.

        Args:
            prefix: key prefix, default ``"summary"``; use another to send several summaries
                (e.g. ``"val-summary"``) in one record.
        """
        k, b = self.num_classes, self.n_bins
        record: dict[str, int | float | list[int]] = {
            f"{prefix}-shape": [k, b],
            f"{prefix}-hist": self.hist.ravel().tolist(),
            f"{prefix}-confusion": self.confusion.ravel().tolist(),
            f"{prefix}-loss-sum": float(self.loss_sum),
            f"{prefix}-n": int(self.n),
        }
        if self.segmentation is not None:
            record.update(self.segmentation.to_record(prefix=prefix))
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any], *, prefix: str = "summary") -> ScoreSummary:
        """Rebuild a summary from :meth:`to_record` output, validating everything first.

        Args:
            record: a mapping (e.g. a Flower ``MetricRecord``) holding the ``<prefix>-*`` keys;
                other keys are ignored.
            prefix: key prefix, default ``"summary"``.

        Raises:
            MetricsInputError: naming every bad key (missing, wrong length, non-integer or
                negative counts, inconsistent totals) at once.
        """
        key = {f: f"{prefix}-{f}" for f in _RECORD_FIELDS}
        problems = [f"{key[f]}: missing" for f in _RECORD_FIELDS if key[f] not in record]
        if problems:
            raise MetricsInputError("invalid ScoreSummary record: " + "; ".join(problems))

        shape = _record_ints(record[key["shape"]], key["shape"], problems)
        if shape is not None and (shape.shape != (2,) or shape[0] < 2 or shape[1] < 1):
            problems.append(
                f"{key['shape']}: expected [K, B] with K >= 2 and B >= 1, got {shape.tolist()}"
            )
            shape = None
        hist = _record_ints(record[key["hist"]], key["hist"], problems)
        confusion = _record_ints(record[key["confusion"]], key["confusion"], problems)
        loss_sum = record[key["loss-sum"]]
        if isinstance(loss_sum, bool) or not isinstance(loss_sum, int | float | np.number):
            problems.append(f"{key['loss-sum']}: expected a number, got {type(loss_sum).__name__}")
        n = record[key["n"]]
        if isinstance(n, bool) or not isinstance(n, int | np.integer):
            problems.append(f"{key['n']}: expected an int count, got {type(n).__name__}")
        if shape is not None:
            k, b = int(shape[0]), int(shape[1])
            if hist is not None and hist.size != k * k * b:
                problems.append(
                    f"{key['hist']}: expected K*K*B = {k}*{k}*{b} = {k * k * b} values for "
                    f"{key['shape']} [{k}, {b}], got {hist.size}"
                )
            if confusion is not None and confusion.size != k * k:
                problems.append(
                    f"{key['confusion']}: expected K*K = {k * k} values for {key['shape']} "
                    f"[{k}, {b}], got {confusion.size}"
                )
        if problems or shape is None or hist is None or confusion is None:
            raise MetricsInputError("invalid ScoreSummary record: " + "; ".join(problems))
        hist = hist.reshape(k, k, b)
        confusion = confusion.reshape(k, k)
        names = {
            "hist": key["hist"],
            "confusion": key["confusion"],
            "loss_sum": key["loss-sum"],
            "n": key["n"],
        }
        problems = _summary_problems(hist, confusion, float(loss_sum), int(n), names)
        try:
            segmentation = SegmentationSums.from_record(record, prefix=prefix)
        except ValueError as err:
            problems.append(str(err))
        if problems:
            raise MetricsInputError("invalid ScoreSummary record: " + "; ".join(problems))
        return cls(
            hist=hist,
            confusion=confusion,
            loss_sum=float(loss_sum),
            n=int(n),
            segmentation=segmentation,
        )


def _check_bins(n_bins: int) -> None:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise MetricsInputError(f"n_bins must be an int >= 1, got {n_bins!r}")


def _record_ints(value: Any, key: str, problems: list[str]) -> np.ndarray | None:
    """``value`` as a 1-D int64 array, or None after appending why it is not one."""
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple | np.ndarray):
        problems.append(f"{key}: expected a list of ints, got {type(value).__name__}")
        return None
    arr = np.asarray(value)
    if arr.ndim != 1:
        problems.append(f"{key}: expected a flat list of ints, got shape {arr.shape}")
        return None
    if arr.size and arr.dtype.kind not in "iu":
        problems.append(
            f"{key}: expected integer counts, got {arr.dtype.name} values (counts must be "
            "summed over sites, not averaged)"
        )
        return None
    return arr.astype(np.int64)


# --------------------------------------------------------------------------- metrics from summaries


def _binned_delong(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUC and DeLong variance from binned scores; scores in the same bin count as tied.

    Vectorised over bins: the structural components are constant within a bin, so they are
    computed once per bin and weighted by the bin's counts.

    Args:
        pos: counts of positives per bin, shape (R, B), one row per classifier.
        neg: counts of negatives per bin, shape (R, B).

    Returns:
        ``(auc (R,), var (R,))``, nan where undefined (as for exact scores).
    """
    pos = pos.astype(np.float64)
    neg = neg.astype(np.float64)
    m, n = pos.sum(axis=1, keepdims=True), neg.sum(axis=1, keepdims=True)
    neg_below = np.cumsum(neg, axis=1) - neg
    pos_above = m - np.cumsum(pos, axis=1)
    v10 = _safe_div(neg_below + 0.5 * neg, n)  # component of a positive in each bin
    v01 = _safe_div(pos_above + 0.5 * pos, m)  # component of a negative in each bin
    v10 = np.nan_to_num(v10)  # bins of a missing class carry no weight
    v01 = np.nan_to_num(v01)
    defined = (m[:, 0] > 0) & (n[:, 0] > 0)
    auc = np.where(defined, _safe_div((pos * v10).sum(axis=1), m[:, 0]), np.nan)
    s10 = _safe_div((pos * (v10 - auc[:, None]) ** 2).sum(axis=1), m[:, 0] - 1)
    s01 = _safe_div((neg * (v01 - auc[:, None]) ** 2).sum(axis=1), n[:, 0] - 1)
    var = _safe_div(s10, m[:, 0]) + _safe_div(s01, n[:, 0])
    var = np.where(defined & (m[:, 0] >= 2) & (n[:, 0] >= 2), var, np.nan)
    return auc, var


def _summary_auc_var(summary: ScoreSummary) -> tuple[np.ndarray, np.ndarray]:
    """One-vs-rest AUC and DeLong variance of every class from the histograms, shapes (K,)."""
    k = summary.num_classes
    idx = np.arange(k)
    pos = summary.hist[idx, idx, :]  # (K, B): positives of class c scored by class c
    neg = summary.hist.sum(axis=0) - pos  # (K, B): everyone else scored by class c
    return _binned_delong(pos, neg)


def summary_auc_variance(summary: ScoreSummary, *, positive: int = 1) -> tuple[float, float]:
    """One-vs-rest AUC of class ``positive`` and its DeLong variance, from a summary.

    Scores in the same bin count as tied, so this equals :func:`delong_auc_variance` on the
    scores replaced by their bin index.

    Args:
        summary: the (summed) summary.
        positive: the class scored, default 1.

    Returns:
        ``(auc, variance)``, nan where undefined.
    """
    _check_positive(positive, summary.num_classes)
    auc, var = _summary_auc_var(summary)
    return float(auc[positive]), float(var[positive])


def summary_metrics(summary: ScoreSummary, *, positive: int = 1) -> dict[str, MetricValue]:
    """The metrics of :func:`classification_metrics`, from a (summed) :class:`ScoreSummary`.

    Same keys as :func:`classification_metrics` (argmax predictions), plus ``loss``
    (``loss_sum / n``). AUCs and their DeLong intervals come from the histograms with scores in
    one bin counted as tied; everything else from the confusion counts, so it matches the
    exact metrics.

    Args:
        summary: the summary (typically the sum of all sites' summaries).
        positive: the positive class of a binary task, default 1; ignored when K > 2.

    Returns:
        Metric name -> value.
    """
    k = summary.num_classes
    if k == 2:
        _check_positive(positive, k)
    auc, var = _summary_auc_var(summary)
    out = _assemble(summary.confusion, auc, var, positive)
    out["loss"] = float(_safe_div(summary.loss_sum, summary.n))
    if summary.segmentation is not None:
        out.update(summary.segmentation.metrics())
    return out


def roc_curve_from_summary(
    summary: ScoreSummary, positive: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """One-vs-rest ROC curve of class ``positive`` at the bin edges, for plots.

    The trapezoidal area under it equals the summary AUC.

    Args:
        summary: the (summed) summary.
        positive: the class scored, default 1.

    Returns:
        ``(fpr, tpr)``, each shape (B + 1,), non-decreasing from 0 to 1 (thresholds from above
        1 down to 0). All nan when the class or its complement has no samples.
    """
    _check_positive(positive, summary.num_classes)
    pos = summary.hist[positive, positive, :].astype(np.float64)
    neg = summary.hist[:, positive, :].sum(axis=0) - pos
    # Predict positive when the score's bin is >= j, for j = B, B-1, ..., 0.
    tp = np.concatenate([[0.0], np.cumsum(pos[::-1])])
    fp = np.concatenate([[0.0], np.cumsum(neg[::-1])])
    m, n = pos.sum(), neg.sum()
    if m == 0 or n == 0:
        nan = np.full(summary.n_bins + 1, np.nan)
        return nan, nan.copy()
    return fp / n, tp / m
