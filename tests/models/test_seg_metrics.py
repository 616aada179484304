"""Dice / IoU on known masks, and the segmentation sums sites share."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from models.metrics import MetricsInputError, ScoreSummary, summary_metrics
from models.seg_metrics import SegmentationSums, segmentation_scores


def _logits(pred: torch.Tensor) -> torch.Tensor:
    """Two-class logits whose argmax is the 0/1 map ``pred`` (B, H, W)."""
    fg = pred.float() * 4 - 2
    return torch.stack([-fg, fg], dim=1)


def _block(top: int, left: int, height: int, width: int, size: int = 16) -> torch.Tensor:
    mask = torch.zeros(size, size, dtype=torch.int64)
    mask[top : top + height, left : left + width] = 1
    return mask


# (prediction, ground truth, Dice, IoU)
KNOWN = [
    # 4x4 truth inside a 4x8 prediction: |A & B| = 16, |A| + |B| = 48, |A | B| = 32
    (_block(2, 2, 4, 8), _block(2, 2, 4, 4), 2 * 16 / 48, 16 / 32),
    (_block(2, 2, 4, 4), _block(2, 2, 4, 4), 1.0, 1.0),  # perfect
    (_block(10, 10, 3, 3), _block(0, 0, 3, 3), 0.0, 0.0),  # disjoint
    (torch.zeros(16, 16, dtype=torch.int64), torch.zeros(16, 16, dtype=torch.int64), 1.0, 1.0),
    (_block(0, 0, 2, 2), torch.zeros(16, 16, dtype=torch.int64), 0.0, 0.0),  # false alarm
]


@pytest.mark.parametrize(("pred", "truth", "dice", "iou"), KNOWN)
def test_dice_and_iou_of_known_masks(pred, truth, dice: float, iou: float) -> None:
    d, i = segmentation_scores(_logits(pred[None]), truth[None, None])
    assert d.shape == i.shape == (1,)
    assert d[0] == pytest.approx(dice) and i[0] == pytest.approx(iou)


def test_batch_gives_one_value_per_image() -> None:
    preds = torch.stack([p for p, *_ in KNOWN])
    truths = torch.stack([t for _, t, *_ in KNOWN]).unsqueeze(1)
    d, i = segmentation_scores(_logits(preds), truths)
    np.testing.assert_allclose(d, [k[2] for k in KNOWN])
    np.testing.assert_allclose(i, [k[3] for k in KNOWN])


def test_bad_inputs_are_explained() -> None:
    with pytest.raises(ValueError, match="label map values must be in \\[0, 1\\]"):
        segmentation_scores(_logits(_block(0, 0, 2, 2)[None]), torch.full((1, 1, 16, 16), 2))
    with pytest.raises(ValueError, match="differs"):
        segmentation_scores(_logits(_block(0, 0, 2, 2)[None]), torch.zeros(1, 1, 8, 8))


def test_sums_add_over_sites_and_round_trip_through_a_record() -> None:
    a = SegmentationSums.from_scores(np.array([1.0, 0.5]), np.array([1.0, 1 / 3]))
    b = SegmentationSums.from_scores(np.array([0.0]), np.array([0.0]))
    total = a + b
    assert total.n == 3 and total.metrics() == pytest.approx({"dice": 0.5, "iou": 4 / 9})
    assert SegmentationSums.from_record(total.to_record()) == total
    assert SegmentationSums.from_record({"summary-n": 3}) is None
    with pytest.raises(ValueError, match="dice_sum must be in"):
        SegmentationSums(dice_sum=5.0, iou_sum=0.0, n=2)


def test_score_summary_carries_the_sums_to_the_global_metrics() -> None:
    labels = np.array([0, 1, 1, 0])
    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.6, 0.4]])
    site_a = dataclasses.replace(
        ScoreSummary.from_scores(labels[:2], probs[:2]), segmentation=SegmentationSums(1.8, 1.6, 2)
    )
    site_b = dataclasses.replace(
        ScoreSummary.from_scores(labels[2:], probs[2:]), segmentation=SegmentationSums(0.6, 0.4, 2)
    )
    total = ScoreSummary.from_record((site_a + site_b).to_record())
    metrics = summary_metrics(total)
    assert metrics["dice"] == pytest.approx(0.6) and metrics["iou"] == pytest.approx(0.5)
    assert metrics["auc"] == pytest.approx(1.0)
    assert "dice" not in summary_metrics(ScoreSummary.from_scores(labels, probs))
    broken = {**site_a.to_record()}
    del broken["summary-seg-n"]
    with pytest.raises(MetricsInputError, match="summary-seg-n"):
        ScoreSummary.from_record(broken)
