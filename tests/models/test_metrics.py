"""Tests for models.metrics: exact metrics, DeLong, and metrics from shared summaries."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from models.metrics import (
    MetricsInputError,
    ScoreSummary,
    classification_metrics,
    delong_auc_variance,
    delong_ci,
    delong_test,
    roc_curve_from_summary,
    summary_auc_variance,
    summary_metrics,
)

# --------------------------------------------------------------------------- data helpers


def _binary_data(
    seed: int, n: int, prevalence: float, levels: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Labels (N,) and positive-class scores (N,); ``levels`` quantises scores to force ties."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(np.int64)
    s = 1.0 / (1.0 + np.exp(-(rng.normal(size=n) + 1.2 * y)))
    if levels is not None:
        s = np.round(s * levels) / levels
    return y, s


def _multi_data(seed: int, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels (N,) in [0, K) and softmax probabilities (N, K) with some signal."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.0
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return y, e / e.sum(axis=1, keepdims=True)


def _probs2(s: np.ndarray) -> np.ndarray:
    """Binary probabilities (N, 2) from positive-class scores (N,)."""
    return np.stack([1.0 - s, s], axis=1)


def _slow_delong(y: np.ndarray, s: np.ndarray) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Brute-force O(m*n) DeLong: the kernel on every (positive, negative) pair."""
    pos, neg = s[y == 1], s[y == 0]
    kernel = np.zeros((pos.size, neg.size))
    for i, x in enumerate(pos):
        for j, z in enumerate(neg):
            kernel[i, j] = 1.0 if x > z else (0.5 if x == z else 0.0)
    v10, v01 = kernel.mean(axis=1), kernel.mean(axis=0)
    var = v10.var(ddof=1) / pos.size + v01.var(ddof=1) / neg.size
    return float(kernel.mean()), float(var), v10, v01


def _bin_index(s: np.ndarray, n_bins: int) -> np.ndarray:
    return np.clip(np.floor(s * n_bins), 0, n_bins - 1)


# --------------------------------------------------------------------------- case tables

# (seed, n, prevalence, levels): levels=None is continuous, small levels give many ties.
BINARY_CASES = [
    (0, 60, 0.5, None),
    (1, 80, 0.3, 5),
    (2, 50, 0.6, 3),
    (3, 40, 0.1, 10),
    (4, 120, 0.5, 20),
]

# (seed, n, k)
MULTI_CASES = [(10, 150, 3), (11, 200, 4), (12, 90, 5)]

BINARY_KEYS = {"n", "auc", "auc_ci", "accuracy", "sensitivity", "specificity", "ppv", "npv", "f1"}
_MULTI_KEYS = {"n", "auc", "accuracy", "macro_sensitivity", "macro_ppv", "macro_f1"}
# (K, keys of classification_metrics); summary_metrics adds "loss".
KEY_CASES = [
    (2, BINARY_KEYS | {"confusion"}),
    (
        3,
        _MULTI_KEYS
        | {"confusion"}
        | {f"{p}_{c}" for p in ("auc", "auc_ci", "sensitivity") for c in range(3)},
    ),
]

# Hand-computed binary example, positive = 1:
#   TP = 3, FN = 1 (4 positives); FP = 2, TN = 4 (6 negatives); N = 10.
HAND_Y = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
HAND_P1 = [0.9, 0.8, 0.7, 0.2, 0.6, 0.55, 0.4, 0.3, 0.1, 0.05]
HAND_EXPECTED = {
    "n": 10,
    "accuracy": 7 / 10,
    "sensitivity": 3 / 4,
    "specificity": 4 / 6,
    "ppv": 3 / 5,
    "npv": 4 / 5,
    "f1": 6 / 9,  # 2TP / (2TP + FP + FN) = 6 / (6 + 2 + 1)
    # 20 of the 24 (positive, negative) pairs are ordered correctly:
    # 0.9, 0.8 and 0.7 beat all 6 negatives; 0.2 beats 2 (0.1, 0.05).
    "auc": (6 + 6 + 6 + 2) / 24,
}

# Thresholding the same example (positive when p1 >= threshold) instead of argmax:
#   0.5:  predicted positive 0.9, 0.8, 0.7 | 0.6, 0.55 -> TP 3, FN 1, FP 2, TN 4 (as argmax)
#   0.35: adds 0.4                                    -> TP 3, FN 1, FP 3, TN 3
#   0.15: adds 0.3 and the positive 0.2               -> TP 4, FN 0, FP 4, TN 2
HAND_THRESHOLD_CASES = [
    (0.5, {"sensitivity": 3 / 4, "specificity": 4 / 6, "ppv": 3 / 5}),
    (0.35, {"sensitivity": 3 / 4, "specificity": 3 / 6, "ppv": 3 / 6, "npv": 3 / 4}),
    (0.15, {"sensitivity": 4 / 4, "specificity": 2 / 6, "ppv": 4 / 8, "npv": 2 / 2}),
]

# Degenerate sites: (y_true, p1); every undefined value must be nan, with no exception.
DEGENERATE_CASES = [
    pytest.param([0, 0, 0, 0], [0.1, 0.7, 0.3, 0.2], ["auc", "sensitivity"], id="no-pos"),
    pytest.param([1, 1, 1], [0.9, 0.2, 0.8], ["auc", "specificity"], id="no-neg"),
    pytest.param([0, 0, 0], [0.1, 0.2, 0.3], ["auc", "ppv", "f1"], id="no-pos-no-pred"),
    pytest.param([], [], ["auc", "accuracy", "sensitivity", "specificity"], id="empty"),
]


def _drop_hist(r: dict[str, Any]) -> None:
    del r["summary-hist"]


def _short_hist(r: dict[str, Any]) -> None:
    r["summary-hist"] = r["summary-hist"][:-1]


def _negative_confusion(r: dict[str, Any]) -> None:
    r["summary-confusion"] = [-1] + r["summary-confusion"][1:]


def _negative_hist(r: dict[str, Any]) -> None:
    r["summary-hist"] = [-1] + r["summary-hist"][1:]


def _float_hist(r: dict[str, Any]) -> None:
    r["summary-hist"] = [v * 0.5 for v in r["summary-hist"]]


def _drop_n(r: dict[str, Any]) -> None:
    del r["summary-n"]


def _wrong_n(r: dict[str, Any]) -> None:
    r["summary-n"] = r["summary-n"] + 1


def _bad_shape(r: dict[str, Any]) -> None:
    r["summary-shape"] = [2]


def _confusion_length(r: dict[str, Any]) -> None:
    r["summary-confusion"] = r["summary-confusion"] + [0]


def _loss_text(r: dict[str, Any]) -> None:
    r["summary-loss-sum"] = "1.0"


def _hist_moved(r: dict[str, Any]) -> None:
    h = list(r["summary-hist"])
    h[0] += 1  # one extra count for (true 0, scored 0): totals per scored class disagree
    r["summary-hist"] = h


# (mutation, key the message must name)
MALFORMED_RECORD_CASES = [
    pytest.param(_drop_hist, "summary-hist", id="missing-hist"),
    pytest.param(_drop_n, "summary-n", id="missing-n"),
    pytest.param(_short_hist, "summary-hist", id="hist-length"),
    pytest.param(_confusion_length, "summary-confusion", id="confusion-length"),
    pytest.param(_negative_confusion, "summary-confusion", id="negative-confusion"),
    pytest.param(_negative_hist, "summary-hist", id="negative-hist"),
    pytest.param(_float_hist, "summary-hist", id="averaged-hist"),
    pytest.param(_wrong_n, "summary-n", id="inconsistent-n"),
    pytest.param(_bad_shape, "summary-shape", id="shape"),
    pytest.param(_loss_text, "summary-loss-sum", id="loss-type"),
    pytest.param(_hist_moved, "summary-hist", id="hist-totals"),
]

# (call, message fragment)
BAD_INPUT_CASES = [
    pytest.param(lambda: classification_metrics([0, 2], _probs2(np.array([0.1, 0.2]))), "[0, 1]"),
    pytest.param(lambda: classification_metrics([0, 1, 1], _probs2(np.array([0.1, 0.2]))), "N"),
    pytest.param(lambda: classification_metrics([0, 1], [0.1, 0.2]), "(N, K)"),
    pytest.param(lambda: classification_metrics([0, 1], [[0.5, np.nan], [0.1, 0.9]]), "finite"),
    pytest.param(
        lambda: classification_metrics([0, 1], _probs2(np.array([0.1, 0.2])), positive=2),
        "positive",
    ),
    pytest.param(
        lambda: classification_metrics([0, 1, 2], np.eye(3), threshold=0.5), "binary tasks"
    ),
    pytest.param(lambda: ScoreSummary.from_scores([0, 1], [[2.0, -1.0], [0.1, 0.9]]), "[0, 1]"),
    pytest.param(lambda: ScoreSummary.from_scores([0, 1], np.eye(2), n_bins=0), "n_bins"),
    pytest.param(lambda: ScoreSummary.empty(2, 10) + ScoreSummary.empty(2, 20), "same classes"),
    pytest.param(lambda: ScoreSummary.empty(2, 10) + ScoreSummary.empty(3, 10), "shapes"),
    pytest.param(lambda: delong_ci([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], alpha=1.5), "alpha"),
    pytest.param(lambda: delong_auc_variance([0, 1, 2], [0.1, 0.2, 0.3]), "binary"),
]


# --------------------------------------------------------------------------- exact metrics


@pytest.mark.parametrize(("seed", "n", "prevalence", "levels"), BINARY_CASES)
@pytest.mark.parametrize("positive", [0, 1])
def test_exact_auc_matches_sklearn(
    seed: int, n: int, prevalence: float, levels: int | None, positive: int
) -> None:
    y, s = _binary_data(seed, n, prevalence, levels)
    probs = _probs2(s)
    metrics = classification_metrics(y, probs, positive=positive)
    expected = roc_auc_score((y == positive).astype(int), probs[:, positive])
    assert metrics["auc"] == pytest.approx(expected, abs=1e-12)
    assert delong_auc_variance(y, s)[0] == pytest.approx(roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize(("seed", "n", "prevalence", "levels"), BINARY_CASES)
def test_delong_variance_matches_bruteforce(
    seed: int, n: int, prevalence: float, levels: int | None
) -> None:
    y, s = _binary_data(seed, n, prevalence, levels)
    auc, var = delong_auc_variance(y, s)
    slow_auc, slow_var, _, _ = _slow_delong(y, s)
    assert auc == pytest.approx(slow_auc, abs=1e-12)
    assert var == pytest.approx(slow_var, rel=1e-10)


def test_delong_ci_contains_auc_and_narrows_with_more_data() -> None:
    widths = []
    for n in (40, 400, 4000):
        y, s = _binary_data(7, n, 0.4, None)
        auc, low, high = delong_ci(y, s)
        assert 0.0 <= low < auc < high <= 1.0
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    # A wider coverage gives a wider interval.
    _, low99, high99 = delong_ci(y, s, alpha=0.01)
    assert high99 - low99 > widths[-1]


def test_delong_ci_is_the_plain_normal_interval_clipped() -> None:
    y, s = _binary_data(8, 60, 0.5, None)
    auc, var = delong_auc_variance(y, s)
    _, low, high = delong_ci(y, s)
    assert low == pytest.approx(auc - 1.959963984540054 * math.sqrt(var))
    assert high == pytest.approx(min(1.0, auc + 1.959963984540054 * math.sqrt(var)))
    # Perfect separation: zero variance, the interval collapses to [1, 1].
    assert delong_ci([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == (1.0, 1.0, 1.0)


@pytest.mark.parametrize(("seed", "n", "prevalence", "levels"), BINARY_CASES)
def test_delong_test_identical_scores_give_p_one(
    seed: int, n: int, prevalence: float, levels: int | None
) -> None:
    y, s = _binary_data(seed, n, prevalence, levels)
    assert delong_test(y, s, s.copy()) == (0.0, 1.0)


def test_delong_test_matches_bruteforce_and_detects_a_better_classifier() -> None:
    rng = np.random.default_rng(21)
    y = (rng.random(300) < 0.5).astype(np.int64)
    good = y * 2.0 + rng.normal(size=300)
    weak = np.round(y * 0.3 + rng.normal(size=300), 1)  # with ties
    z, p = delong_test(y, good, weak)
    assert z > 0 and p < 1e-6
    z_rev, p_rev = delong_test(y, weak, good)
    assert z_rev == pytest.approx(-z) and p_rev == pytest.approx(p)
    # Reference: variance of the paired difference of brute-force structural components.
    a_auc, _, a10, a01 = _slow_delong(y, good)
    b_auc, _, b10, b01 = _slow_delong(y, weak)
    var = (a10 - b10).var(ddof=1) / a10.size + (a01 - b01).var(ddof=1) / a01.size
    assert z == pytest.approx((a_auc - b_auc) / math.sqrt(var), rel=1e-10)


def test_delong_test_similar_classifiers_are_not_significant() -> None:
    rng = np.random.default_rng(22)
    y = (rng.random(200) < 0.5).astype(np.int64)
    base = y + rng.normal(size=200)
    _, p = delong_test(y, base, base + rng.normal(scale=1e-3, size=200))
    assert p > 0.2


def test_binary_confusion_metrics_hand_example() -> None:
    metrics = classification_metrics(HAND_Y, _probs2(np.array(HAND_P1)))
    for key, expected in HAND_EXPECTED.items():
        assert metrics[key] == pytest.approx(expected), key
    assert metrics["confusion"] == [[4, 2], [1, 3]]  # rows true, columns predicted
    low, high = metrics["auc_ci"]
    assert low < metrics["auc"] < high


def test_binary_positive_zero_swaps_the_roles() -> None:
    metrics = classification_metrics(HAND_Y, _probs2(np.array(HAND_P1)), positive=0)
    assert metrics["sensitivity"] == pytest.approx(HAND_EXPECTED["specificity"])
    assert metrics["specificity"] == pytest.approx(HAND_EXPECTED["sensitivity"])
    assert metrics["ppv"] == pytest.approx(HAND_EXPECTED["npv"])
    assert metrics["npv"] == pytest.approx(HAND_EXPECTED["ppv"])
    assert metrics["auc"] == pytest.approx(HAND_EXPECTED["auc"])


@pytest.mark.parametrize(("threshold", "expected"), HAND_THRESHOLD_CASES)
def test_binary_threshold(threshold: float, expected: dict[str, float]) -> None:
    metrics = classification_metrics(HAND_Y, _probs2(np.array(HAND_P1)), threshold=threshold)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value), key
    assert metrics["auc"] == pytest.approx(HAND_EXPECTED["auc"])


@pytest.mark.parametrize(("y", "p1", "nan_keys"), DEGENERATE_CASES)
def test_degenerate_sites_give_nan_without_raising(
    y: list[int], p1: list[float], nan_keys: list[str]
) -> None:
    probs = _probs2(np.array(p1, dtype=float)).reshape(-1, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exact = classification_metrics(np.array(y, dtype=np.int64), probs)
        binned = summary_metrics(ScoreSummary.from_scores(np.array(y, dtype=np.int64), probs))
    for metrics in (exact, binned):
        assert metrics["n"] == len(y)
        for key in nan_keys:
            assert math.isnan(metrics[key]), key
        assert all(math.isnan(v) for v in metrics["auc_ci"])
    if not y:
        assert math.isnan(binned["loss"])


def test_single_positive_gives_auc_but_no_interval() -> None:
    y, s = [0, 0, 0, 1], [0.1, 0.2, 0.9, 0.5]
    auc, var = delong_auc_variance(y, s)
    assert auc == pytest.approx(2 / 3) and math.isnan(var)
    assert all(math.isnan(v) for v in delong_test(y, s, s))


@pytest.mark.parametrize(("seed", "n", "k"), MULTI_CASES)
def test_multiclass_matches_sklearn(seed: int, n: int, k: int) -> None:
    y, probs = _multi_data(seed, n, k)
    metrics = classification_metrics(y, probs)
    assert metrics["auc"] == pytest.approx(
        roc_auc_score(y, probs, multi_class="ovr", average="macro"), abs=1e-12
    )
    for c in range(k):
        assert metrics[f"auc_{c}"] == pytest.approx(roc_auc_score(y == c, probs[:, c]), abs=1e-12)
        low, high = metrics[f"auc_ci_{c}"]
        assert low < metrics[f"auc_{c}"] < high
    pred = probs.argmax(axis=1)
    assert metrics["accuracy"] == pytest.approx(np.mean(pred == y))
    assert metrics["macro_sensitivity"] == pytest.approx(recall_score(y, pred, average="macro"))
    assert metrics["macro_ppv"] == pytest.approx(precision_score(y, pred, average="macro"))
    assert metrics["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    recalls = recall_score(y, pred, average=None)
    for c in range(k):
        assert metrics[f"sensitivity_{c}"] == pytest.approx(recalls[c])
    assert np.array_equal(np.array(metrics["confusion"]).sum(axis=1), np.bincount(y, minlength=k))


def test_multiclass_missing_class_is_left_out_of_macro_averages() -> None:
    y = np.array([0, 0, 1, 1, 0, 1])
    probs = np.array([[0.7, 0.2, 0.1]] * 3 + [[0.2, 0.7, 0.1]] * 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics = classification_metrics(y, probs)
    assert math.isnan(metrics["auc_2"]) and math.isnan(metrics["sensitivity_2"])
    assert metrics["macro_sensitivity"] == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert not math.isnan(metrics["auc"])


# --------------------------------------------------------------------------- summaries


@pytest.mark.parametrize("n_bins", [10, 50])
@pytest.mark.parametrize(("seed", "n", "prevalence", "levels"), BINARY_CASES)
def test_summary_equals_exact_on_bin_centres(
    seed: int, n: int, prevalence: float, levels: int | None, n_bins: int
) -> None:
    y, s = _binary_data(seed, n, prevalence, levels)
    centres = (_bin_index(s, n_bins) + 0.5) / n_bins
    probs = _probs2(centres)
    exact = classification_metrics(y, probs)
    binned = summary_metrics(ScoreSummary.from_scores(y, probs, n_bins=n_bins))
    for key in ("auc", "accuracy", "sensitivity", "specificity", "ppv", "npv", "f1"):
        assert binned[key] == pytest.approx(exact[key], abs=1e-12), key
    assert binned["auc_ci"] == pytest.approx(exact["auc_ci"], abs=1e-12)
    assert binned["confusion"] == exact["confusion"]


@pytest.mark.parametrize(("seed", "n", "k"), MULTI_CASES)
def test_summary_variance_equals_delong_on_bin_indices(seed: int, n: int, k: int) -> None:
    y, probs = _multi_data(seed, n, k)
    summary = ScoreSummary.from_scores(y, probs, n_bins=20)
    for c in range(k):
        expected = delong_auc_variance(y == c, _bin_index(probs[:, c], 20))
        assert summary_auc_variance(summary, positive=c) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("seed", "n", "prevalence"), [(30, 400, 0.5), (31, 300, 0.2)])
def test_summary_auc_approaches_exact_with_50_bins(seed: int, n: int, prevalence: float) -> None:
    y, s = _binary_data(seed, n, prevalence, None)
    exact = classification_metrics(y, _probs2(s))
    binned = summary_metrics(ScoreSummary.from_scores(y, _probs2(s), n_bins=50))
    assert abs(binned["auc"] - exact["auc"]) < 0.01
    assert binned["auc_ci"] == pytest.approx(exact["auc_ci"], abs=0.02)


@pytest.mark.parametrize(("seed", "n", "k"), MULTI_CASES)
def test_summary_metrics_have_the_same_keys_and_confusion_metrics(
    seed: int, n: int, k: int
) -> None:
    y, probs = _multi_data(seed, n, k)
    exact = classification_metrics(y, probs)
    binned = summary_metrics(ScoreSummary.from_scores(y, probs, loss_sum=3.0))
    assert set(binned) == set(exact) | {"loss"}
    assert binned["loss"] == pytest.approx(3.0 / n)
    for key in ("n", "accuracy", "macro_sensitivity", "macro_ppv", "macro_f1", "confusion"):
        assert binned[key] == exact[key], key
    assert abs(binned["auc"] - exact["auc"]) < 0.01


@pytest.mark.parametrize(("k", "expected"), KEY_CASES)
def test_metric_keys_are_the_documented_ones(k: int, expected: set[str]) -> None:
    y, probs = _multi_data(60, 40, k)
    assert set(classification_metrics(y, probs)) == expected
    assert set(summary_metrics(ScoreSummary.from_scores(y, probs))) == expected | {"loss"}


def test_summed_sites_equal_the_summary_of_the_pooled_data() -> None:
    y, probs = _multi_data(40, 300, 3)
    cuts = [0, 70, 180, 300]
    sites = [
        ScoreSummary.from_scores(y[a:b], probs[a:b], n_bins=25, loss_sum=0.25 * (i + 1))
        for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:], strict=True))
    ]
    pooled = ScoreSummary.from_scores(y, probs, n_bins=25, loss_sum=1.5)
    total = sites[0] + sites[1] + sites[2]
    assert total == pooled
    assert sum(sites) == pooled
    assert ScoreSummary.empty(3, 25) + pooled == pooled
    assert np.array_equal(total.hist, pooled.hist) and total.n == 300


def test_summary_is_counts_only() -> None:
    y, probs = _multi_data(41, 50, 3)
    summary = ScoreSummary.from_scores(y, probs, n_bins=8)
    assert summary.hist.shape == (3, 3, 8) and summary.hist.dtype == np.int64
    assert summary.confusion.shape == (3, 3) and summary.confusion.dtype == np.int64
    assert np.array_equal(summary.hist.sum(axis=(1, 2)), 3 * np.bincount(y, minlength=3))
    # Scores of exactly 0 and 1 land in the first and last bins.
    edge = ScoreSummary.from_scores([0, 1], [[1.0, 0.0], [0.0, 1.0]], n_bins=4)
    assert edge.hist[1, 1, 3] == 1 and edge.hist[1, 0, 0] == 1


def test_record_round_trip_holds_only_metricrecord_types() -> None:
    y, probs = _multi_data(42, 120, 3)
    summary = ScoreSummary.from_scores(y, probs, n_bins=10, loss_sum=12.5)
    record = summary.to_record()
    assert set(record) == {
        "summary-shape",
        "summary-hist",
        "summary-confusion",
        "summary-loss-sum",
        "summary-n",
    }
    for value in record.values():
        assert type(value) in (int, float, list)
        if isinstance(value, list):
            assert all(type(v) is int for v in value)
    assert record["summary-shape"] == [3, 10]
    assert ScoreSummary.from_record(record) == summary
    other = summary.to_record(prefix="val-summary")
    assert ScoreSummary.from_record({**record, **other}, prefix="val-summary") == summary


@pytest.mark.parametrize(("mutate", "key"), MALFORMED_RECORD_CASES)
def test_from_record_rejects_malformed_records_naming_the_key(
    mutate: Callable[[dict[str, Any]], None], key: str
) -> None:
    y, probs = _multi_data(43, 40, 3)
    record = ScoreSummary.from_scores(y, probs, n_bins=5).to_record()
    mutate(record)
    with pytest.raises(MetricsInputError, match=key):
        ScoreSummary.from_record(record)


def test_from_record_lists_every_problem_at_once() -> None:
    record = ScoreSummary.empty(2, 5).to_record()
    del record["summary-n"]
    del record["summary-loss-sum"]
    with pytest.raises(MetricsInputError, match="summary-loss-sum.*summary-n"):
        ScoreSummary.from_record(record)


@pytest.mark.parametrize("positive", [0, 1])
def test_roc_curve_from_summary(positive: int) -> None:
    y, s = _binary_data(50, 200, 0.4, None)
    summary = ScoreSummary.from_scores(y, _probs2(s), n_bins=20)
    fpr, tpr = roc_curve_from_summary(summary, positive=positive)
    assert fpr.shape == tpr.shape == (21,)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    auc = summary_metrics(summary, positive=positive)["auc"]
    assert np.trapezoid(tpr, fpr) == pytest.approx(auc, abs=1e-12)


def test_roc_curve_of_a_missing_class_is_nan() -> None:
    summary = ScoreSummary.from_scores([0, 0], [[0.8, 0.2], [0.6, 0.4]], n_bins=4)
    fpr, tpr = roc_curve_from_summary(summary)
    assert np.all(np.isnan(fpr)) and np.all(np.isnan(tpr))


@pytest.mark.parametrize(("call", "fragment"), BAD_INPUT_CASES)
def test_bad_input_raises_a_value_error_saying_what_was_expected(
    call: Callable[[], object], fragment: str
) -> None:
    with pytest.raises(MetricsInputError) as info:
        call()
    assert isinstance(info.value, ValueError)
    assert fragment in str(info.value)
