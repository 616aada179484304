"""Class-balanced sampling (the RCC study's sampler)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["ClassBalancedSampler"]


class ClassBalancedSampler(Sampler[int]):
    """Draw a class uniformly among the classes present, then a sample of it uniformly.

    Draws are with replacement, so each class is seen about equally often whatever the
    imbalance. The order depends only on ``seed`` and the epoch: iteration ``k`` after
    ``set_epoch(e)`` uses epoch ``e + k``; without ``set_epoch`` the epochs count from 0.

    Args:
        labels: class index per sample, shape ``(N,)``, non-negative ints.
        num_samples: draws per epoch. Default ``None`` = ``N``.
        seed: random seed. Default 0.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray | torch.Tensor,
        *,
        num_samples: int | None = None,
        seed: int = 0,
    ) -> None:
        array = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
        problems = []
        if array.ndim != 1 or array.size == 0:
            problems.append(f"labels must be a non-empty 1-D sequence, got shape {array.shape}")
        elif array.dtype.kind not in "iu" or array.min() < 0:
            problems.append("labels must be non-negative integers")
        if num_samples is not None and (not isinstance(num_samples, int) or num_samples < 1):
            problems.append(f"num_samples must be a positive int, got {num_samples!r}")
        if not isinstance(seed, int) or seed < 0:
            problems.append(f"seed must be a non-negative int, got {seed!r}")
        if problems:
            raise ValueError("ClassBalancedSampler: " + "; ".join(problems))
        self.labels = array.astype(np.int64)
        self.num_samples = len(array) if num_samples is None else num_samples
        self.seed = seed
        self.epoch = 0
        self.classes, inverse = np.unique(self.labels, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        self._members = order  # sample indices grouped by class
        counts = np.bincount(inverse)
        self._starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self._counts = counts

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration's order a function of ``(seed, epoch)``; epoch >= 0."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        cls = rng.integers(len(self.classes), size=self.num_samples)
        offset = (rng.random(self.num_samples) * self._counts[cls]).astype(np.int64)
        picks = self._members[self._starts[cls] + offset]
        return iter(picks.tolist())
