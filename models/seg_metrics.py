"""Segmentation metrics: per-image Dice and IoU (MONAI), and the sums a site may share.

:func:`segmentation_scores` computes, per image, the foreground Dice and IoU of the argmax
prediction against the label map with MONAI's ``DiceMetric`` and ``MeanIoU``
(``include_background=False``, ``ignore_empty=False``: an image whose ground truth and
prediction are both empty scores 1, one with an empty ground truth and a non-empty prediction
scores 0, so every image counts). With several foreground classes the per-image value is their
mean.

A site shares only :class:`SegmentationSums` (the sums of the per-image values and the image
count); the sums of all sites give the global mean Dice / IoU over the union of their images.
Metric keys: ``dice`` and ``iou`` (means over images).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.metrics import DiceMetric, MeanIoU
from monai.networks.utils import one_hot

__all__ = ["SegmentationSums", "segmentation_scores"]


def segmentation_scores(
    mask_logits: torch.Tensor, mask: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """Per-image foreground Dice and IoU of the argmax prediction.

    Args:
        mask_logits: ``(B, K, H, W)`` logits (or probabilities), K >= 2 including background.
        mask: ``(B, 1, H, W)`` (or ``(B, H, W)``) integer label map with values in [0, K).

    Returns:
        ``(dice (B,), iou (B,))`` float64 arrays.

    Raises:
        ValueError: shapes that do not fit, or label values outside [0, K).
    """
    if mask.ndim == 3:
        mask = mask.unsqueeze(1)
    k = mask_logits.shape[1] if mask_logits.ndim == 4 else 0
    if k < 2 or mask.ndim != 4 or mask.shape[0] != mask_logits.shape[0]:
        raise ValueError(
            f"need mask logits (B, K>=2, H, W) and a label map (B, 1, H, W), got "
            f"{tuple(mask_logits.shape)} and {tuple(mask.shape)}"
        )
    if mask.shape[-2:] != mask_logits.shape[-2:]:
        raise ValueError(
            f"label map size {tuple(mask.shape[-2:])} differs from the prediction's "
            f"{tuple(mask_logits.shape[-2:])}"
        )
    labels = mask.long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(
            f"label map values must be in [0, {k - 1}], "
            f"got {int(labels.min())}..{int(labels.max())}"
        )
    pred = one_hot(mask_logits.argmax(dim=1, keepdim=True), num_classes=k)
    truth = one_hot(labels, num_classes=k)
    options = {"include_background": False, "reduction": "none", "ignore_empty": False}
    dice = DiceMetric(**options)(pred, truth)  # (B, K-1)
    iou = MeanIoU(**options)(pred, truth)
    return (
        torch.as_tensor(dice).float().mean(dim=1).cpu().numpy().astype(np.float64),
        torch.as_tensor(iou).float().mean(dim=1).cpu().numpy().astype(np.float64),
    )


@dataclass(frozen=True)
class SegmentationSums:
    """What a site shares about its segmentation quality: sums of per-image Dice and IoU.

    Args:
        dice_sum: sum of per-image Dice values.
        iou_sum: sum of per-image IoU values.
        n: number of images.
    """

    dice_sum: float = 0.0
    iou_sum: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.n, bool) or not isinstance(self.n, int | np.integer) or self.n < 0:
            problems.append(f"n must be an int count >= 0, got {self.n!r}")
        for name in ("dice_sum", "iou_sum"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float | np.number):
                problems.append(f"{name} must be a number, got {value!r}")
            elif not 0 <= float(value) <= max(int(self.n), 0) + 1e-6:
                problems.append(f"{name} must be in [0, n = {self.n}], got {value!r}")
        if problems:
            raise ValueError("invalid SegmentationSums: " + "; ".join(problems))
        object.__setattr__(self, "dice_sum", float(self.dice_sum))
        object.__setattr__(self, "iou_sum", float(self.iou_sum))
        object.__setattr__(self, "n", int(self.n))

    @classmethod
    def from_scores(cls, dice: np.ndarray, iou: np.ndarray) -> SegmentationSums:
        """Sums of per-image values (from :func:`segmentation_scores`)."""
        return cls(float(np.sum(dice)), float(np.sum(iou)), int(np.size(dice)))

    def __add__(self, other: SegmentationSums) -> SegmentationSums:
        if not isinstance(other, SegmentationSums):
            return NotImplemented
        return SegmentationSums(
            self.dice_sum + other.dice_sum, self.iou_sum + other.iou_sum, self.n + other.n
        )

    def metrics(self) -> dict[str, float]:
        """``{"dice": mean Dice, "iou": mean IoU}`` (nan for no images)."""
        if self.n == 0:
            return {"dice": float("nan"), "iou": float("nan")}
        return {"dice": self.dice_sum / self.n, "iou": self.iou_sum / self.n}

    def to_record(self, *, prefix: str = "summary") -> dict[str, int | float]:
        """Flat values for a Flower ``MetricRecord``: ``<prefix>-seg-dice-sum``,
        ``<prefix>-seg-iou-sum``, ``<prefix>-seg-n`` (sums: add them over sites)."""
        return {
            f"{prefix}-seg-dice-sum": self.dice_sum,
            f"{prefix}-seg-iou-sum": self.iou_sum,
            f"{prefix}-seg-n": self.n,
        }

    @classmethod
    def from_record(
        cls, record: Mapping[str, Any], *, prefix: str = "summary"
    ) -> SegmentationSums | None:
        """The sums in ``record``, or None when it has no ``<prefix>-seg-*`` keys."""
        keys = [f"{prefix}-seg-{f}" for f in ("dice-sum", "iou-sum", "n")]
        present = [k for k in keys if k in record]
        if not present:
            return None
        if len(present) != len(keys):
            missing = ", ".join(k for k in keys if k not in record)
            raise ValueError(f"invalid SegmentationSums record: missing {missing}")
        return cls(record[keys[0]], record[keys[1]], record[keys[2]])
