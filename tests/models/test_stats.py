"""Tests for models.stats: paired DeLong, bootstrap CIs, mean +- sd with a t interval."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from models.metrics import MetricsInputError, classification_metrics, delong_test
from models.stats import bootstrap_cis, compare_aucs, mean_sd_ci


def _two_correlated_classifiers(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.35).astype(int)
    shared = rng.normal(size=n)  # both classifiers see the same case difficulty: correlated
    a = 1.2 * y + shared + rng.normal(scale=0.6, size=n)
    b = 0.7 * y + shared + rng.normal(scale=0.6, size=n)
    return y, a, b


def test_compare_aucs_matches_a_paired_bootstrap_of_the_difference() -> None:
    """DeLong's SE of AUC_a - AUC_b agrees with the bootstrap SE (reference estimate)."""
    y, a, b = _two_correlated_classifiers(400, seed=1)
    result = compare_aucs(y, a, b)
    assert result.auc_a == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert result.auc_b == pytest.approx(roc_auc_score(y, b), abs=1e-12)
    rng = np.random.default_rng(7)
    diffs = []
    for _ in range(1000):
        rows = rng.integers(0, y.size, y.size)
        if 0 < y[rows].sum() < y.size:
            diffs.append(roc_auc_score(y[rows], a[rows]) - roc_auc_score(y[rows], b[rows]))
    boot_se = float(np.std(diffs, ddof=1))
    delong_se = result.diff / result.z
    assert delong_se == pytest.approx(boot_se, rel=0.15)
    assert result.ci[0] < result.diff < result.ci[1]
    assert result.p < 0.05  # A carries more signal on 400 rows
    z, p = delong_test(y, a, b)  # the same test as the metrics module's
    assert (result.z, result.p) == pytest.approx((z, p))


def test_compare_aucs_correlation_makes_the_test_sharper_than_unpaired() -> None:
    y, a, b = _two_correlated_classifiers(300, seed=3)
    paired = compare_aucs(y, a, b)
    from models.metrics import delong_auc_variance

    unpaired_se = math.sqrt(delong_auc_variance(y, a)[1] + delong_auc_variance(y, b)[1])
    assert paired.diff / paired.z < unpaired_se  # positive covariance lowers Var(A - B)


@pytest.mark.parametrize(
    ("y", "a", "b", "expected_p"),
    [
        ([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], [0.1, 0.2, 0.8, 0.9], 1.0),
        ([0, 1], [0.1, 0.9], [0.9, 0.1], None),  # one case per class: undefined
    ],
)
def test_compare_aucs_edge_cases(y, a, b, expected_p) -> None:  # type: ignore[no-untyped-def]
    result = compare_aucs(y, a, b)
    if expected_p is None:
        assert math.isnan(result.p)
    else:
        assert result.p == expected_p and result.diff == 0.0


def test_bootstrap_cis_multiclass_contain_the_estimate_and_narrow_with_n() -> None:
    rng = np.random.default_rng(0)

    def data(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.choice(3, size=n, p=[0.6, 0.3, 0.1])
        logits = rng.normal(size=(n, 3))
        logits[np.arange(n), y] += 1.5
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        return y, probs

    y, probs = data(60)
    cis = bootstrap_cis(y, probs, n_resamples=300, seed=1)
    point = classification_metrics(y, probs)
    for name in ("auc", "accuracy", "macro_f1"):
        low, high = cis[name]
        assert low <= point[name] <= high, name  # type: ignore[operator]
        assert 0.0 <= low < high <= 1.0
    y_big, probs_big = data(600)
    big = bootstrap_cis(y_big, probs_big, n_resamples=300, seed=1)
    assert big["auc"][1] - big["auc"][0] < cis["auc"][1] - cis["auc"][0]
    assert bootstrap_cis(y, probs, n_resamples=300, seed=1) == cis  # seeded


def test_bootstrap_cis_rejects_unknown_metrics() -> None:
    with pytest.raises(MetricsInputError, match="macro_f1"):
        bootstrap_cis([0, 1, 0, 1], [[0.6, 0.4]] * 4, metrics=("macro_f1",))


def test_mean_sd_ci_uses_the_t_distribution() -> None:
    result = mean_sd_ci([1.0, 2.0, 3.0])
    assert (result.mean, result.sd, result.n) == (2.0, 1.0, 3)
    half = 4.302652729749464 / math.sqrt(3)  # t_{0.975, 2}
    assert result.ci == pytest.approx((2.0 - half, 2.0 + half))
    one = mean_sd_ci([0.7, None, float("nan")])
    assert one.mean == 0.7 and one.n == 1 and math.isnan(one.sd)
    assert mean_sd_ci([0.5, 0.5]).ci == (0.5, 0.5)
