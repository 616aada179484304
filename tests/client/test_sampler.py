from __future__ import annotations

import numpy as np
import pytest
from torch.utils.data import DataLoader

from client.sampler import ClassBalancedSampler

LABELS = np.array([0] * 90 + [1] * 10)  # 9:1 imbalance


def test_uniform_over_classes() -> None:
    sampler = ClassBalancedSampler(LABELS, num_samples=4000, seed=0)
    picks = np.fromiter(sampler, dtype=np.int64)
    assert len(picks) == len(sampler) == 4000
    share = np.bincount(LABELS[picks], minlength=2) / len(picks)
    assert np.allclose(share, 0.5, atol=0.04)
    # within a class, every sample comes up about equally often
    minority = np.bincount(picks[LABELS[picks] == 1], minlength=100)[90:]
    assert minority.min() > 0.5 * minority.mean()


def test_deterministic_per_seed_and_epoch() -> None:
    a = ClassBalancedSampler(LABELS, seed=3)
    b = ClassBalancedSampler(LABELS, seed=3)
    first = list(a)
    assert len(first) == len(LABELS)
    assert first == list(b)
    assert list(a) != first  # the next epoch differs
    a.set_epoch(0)
    assert list(a) == first  # ... and set_epoch brings an epoch back
    assert list(ClassBalancedSampler(LABELS, seed=4)) != first


def test_missing_classes_and_loader() -> None:
    labels = [2, 2, 5]  # only classes present are drawn
    picks = list(ClassBalancedSampler(labels, num_samples=200, seed=0))
    assert set(picks) == {0, 1, 2}
    assert 70 < picks.count(2) < 130
    loader = DataLoader(list(range(3)), batch_size=4, sampler=ClassBalancedSampler(labels))
    assert sum(len(batch) for batch in loader) == 3


@pytest.mark.parametrize(
    ("labels", "kwargs", "fragment"),
    [
        ([], {}, "non-empty 1-D"),
        ([0.5, 1.0], {}, "non-negative integers"),
        ([-1, 0], {}, "non-negative integers"),
        ([0, 1], {"num_samples": 0}, "num_samples must be a positive int"),
        ([0, 1], {"seed": -1}, "seed must be a non-negative int"),
    ],
)
def test_bad_arguments(labels: list[float], kwargs: dict[str, int], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        ClassBalancedSampler(labels, **kwargs)
