"""Class-balanced softmax focal loss for classification logits ``(B, C)``.

The RCC grading study trains MUF-Net with focal loss and a class-balancing factor. The
computation is MONAI's ``monai.losses.FocalLoss(use_softmax=True)``; this wrapper takes logits
``(B, C)`` and integer targets ``(B,)`` and does the reduction itself, because for 2-D input
MONAI's own reductions are off by the class count (checked with MONAI 1.6):

* ``reduction="mean"`` averages the ``(B, C)`` element-wise loss over B*C entries, i.e. returns
  ``CE / C`` at ``gamma=0``;
* ``reduction="sum"`` first calls ``loss.mean(dim=[])`` over the (empty) spatial dims, which in
  PyTorch reduces over *all* dims, so it also returns ``CE / C``.

With ``reduction="none"`` MONAI's per-element loss is right; summing it over classes gives the
per-sample focal loss ``-w_t (1 - p_t)^gamma log p_t``, and the batch mean follows.

The batch mean is a plain mean over samples (not divided by the sum of the class weights as
``torch.nn.CrossEntropyLoss(weight=...)`` does): it is what Opacus assumes for
``loss_reduction="mean"``, and with weights normalised to mean 1 it keeps the loss scale.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from numbers import Integral, Real

import torch
from monai.losses import DiceCELoss
from monai.losses import FocalLoss as _MonaiFocalLoss
from torch import nn

__all__ = [
    "DFSLoss",
    "SegmentationLoss",
    "SoftmaxFocalLoss",
    "build_focal_loss",
    "build_loss",
    "class_balance_weights",
    "model_loss",
]

logger = logging.getLogger(__name__)

_REDUCTIONS = ("mean", "sum", "none")


def class_balance_weights(counts: Sequence[int]) -> list[float]:
    """Inverse-frequency class weights, normalised so that their mean is 1.

    Rule for classes with no samples: they get the weight of the rarest class that has
    samples (never more), with a warning. A class absent from the training data does not
    change the loss, but if a stray sample of it shows up it is treated as the rarest class.

    Args:
        counts: samples per class, in class-index order, e.g. ``[70, 30]``.

    Returns:
        One weight per class, e.g. ``[0.6, 1.4]`` for ``[70, 30]``.

    Raises:
        ValueError: counts empty, not non-negative integers, or all zero.
    """
    counts = list(counts)
    bad = [
        f"class {i}: {c!r}"
        for i, c in enumerate(counts)
        if isinstance(c, bool) or not isinstance(c, Integral) or c < 0
    ]
    if not counts or bad:
        raise ValueError(
            "class counts must be a non-empty sequence of integers >= 0"
            + (f", got {'; '.join(bad)}" if bad else ", got an empty sequence")
        )
    if not any(counts):
        raise ValueError(f"class counts must include at least one sample, got {counts}")
    inverse = [1.0 / c if c else 0.0 for c in counts]
    rarest = max(inverse)
    empty = [i for i, c in enumerate(counts) if c == 0]
    if empty:
        logger.warning(
            "classes %s have no samples; they get the weight of the rarest class present", empty
        )
        inverse = [w if w else rarest for w in inverse]
    mean = sum(inverse) / len(inverse)
    return [w / mean for w in inverse]


class SoftmaxFocalLoss(nn.Module):
    """Softmax focal loss ``-w_t (1 - p_t)^gamma log p_t`` on logits, MONAI under the hood.

    Args:
        gamma: focusing exponent; 0 gives (weighted) cross-entropy. Must be 0 or >= 1:
            for 0 < gamma < 1 MONAI's ``(1 - p)^gamma`` has an infinite slope at ``p = 1``
            and a confidently correct sample produces NaN gradients. Default 2.0.
        class_weights: per-class factor ``w`` (length C, each >= 0), e.g. from
            :func:`class_balance_weights`. Default None (all 1).
        reduction: ``"mean"`` over samples, ``"sum"``, or ``"none"`` for per-sample losses
            ``(B,)``. Default ``"mean"``.

    Shapes:
        logits ``(B, C)`` with C >= 2 (softmax is applied here, so models output raw logits);
        target ``(B,)`` integer class indices in ``[0, C)``.
    """

    def __init__(
        self,
        *,
        gamma: float = 2.0,
        class_weights: Sequence[float] | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        problems = []
        if isinstance(gamma, bool) or not isinstance(gamma, Real) or not math.isfinite(gamma):
            problems.append(f"gamma must be a finite number, got {gamma!r}")
        elif gamma < 0:
            problems.append(f"gamma must be >= 0, got {gamma}")
        elif 0 < gamma < 1:
            problems.append(
                f"gamma must be 0 or >= 1, got {gamma}: for 0 < gamma < 1 the focal term "
                "(1 - p)^gamma has an infinite slope at p = 1, so confident correct predictions "
                "give NaN gradients"
            )
        weights: list[float] | None = None
        if class_weights is not None:
            weights = list(class_weights)
            if len(weights) < 2 or any(
                isinstance(w, bool) or not isinstance(w, Real) or not math.isfinite(w) or w < 0
                for w in weights
            ):
                problems.append(
                    f"class_weights must be >= 2 finite numbers >= 0 (one per class), got {weights}"
                )
        if reduction not in _REDUCTIONS:
            problems.append(f"reduction must be one of {', '.join(_REDUCTIONS)}, got {reduction!r}")
        if problems:
            raise ValueError("invalid focal loss options: " + "; ".join(problems))
        self.gamma = float(gamma)
        self.reduction = reduction
        self.num_classes = len(weights) if weights is not None else None
        self.focal = _MonaiFocalLoss(
            gamma=self.gamma,
            weight=None if weights is None else [float(w) for w in weights],
            use_softmax=True,
            to_onehot_y=True,
            reduction="none",
        )

    def _check(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        problems = []
        if logits.ndim != 2 or logits.shape[1] < 2:
            problems.append(f"logits must be (B, C) with C >= 2, got {tuple(logits.shape)}")
        elif self.num_classes is not None and logits.shape[1] != self.num_classes:
            problems.append(
                f"logits have {logits.shape[1]} classes but class_weights has {self.num_classes}"
            )
        if target.ndim != 1 or target.dtype.is_floating_point or target.dtype == torch.bool:
            problems.append(
                f"target must be (B,) integer class indices, got {tuple(target.shape)} "
                f"{target.dtype}"
            )
        elif logits.ndim >= 1 and target.shape[0] != logits.shape[0]:
            problems.append(
                f"batch sizes differ: logits {logits.shape[0]}, target {target.shape[0]}"
            )
        elif not problems and target.numel():
            low, high = int(target.min()), int(target.max())
            if low < 0 or high >= logits.shape[1]:
                problems.append(
                    f"target must hold class indices in [0, {logits.shape[1]}), got {low}..{high}"
                )
        if problems:
            raise ValueError("focal loss: " + "; ".join(problems))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of ``logits (B, C)`` against ``target (B,)``; scalar, or ``(B,)`` for "none"."""
        self._check(logits, target)
        per_sample = self.focal(logits, target.view(-1, 1)).sum(dim=1)  # (B, C) -> (B,)
        if self.reduction == "mean":
            return per_sample.mean()
        if self.reduction == "sum":
            return per_sample.sum()
        return per_sample


def build_focal_loss(
    *, gamma: float = 2.0, class_counts: Sequence[int] | None = None
) -> SoftmaxFocalLoss:
    """The study's loss: focal loss, class-balanced when class counts are given.

    Args:
        gamma: focusing exponent (0, or >= 1). Default 2.0.
        class_counts: training samples per class; turned into weights with
            :func:`class_balance_weights`. Default None (no class balancing).

    Returns:
        A :class:`SoftmaxFocalLoss` taking logits ``(B, C)`` and targets ``(B,)``.
    """
    weights = None if class_counts is None else class_balance_weights(class_counts)
    return SoftmaxFocalLoss(gamma=gamma, class_weights=weights)


class SegmentationLoss(nn.Module):
    """Dice + cross-entropy on mask logits (MONAI's ``DiceCELoss``, softmax, one-hot target).

    ``forward(mask_logits (B, K, H, W), mask (B, 1, H, W) int) -> scalar``. The Dice term is
    computed per image and averaged over the batch (``batch=False``), so the loss is a mean of
    per-sample losses as Opacus assumes.

    Args:
        lambda_dice: weight of the Dice term. Default 1.0.
        lambda_ce: weight of the cross-entropy term. Default 1.0.
    """

    def __init__(self, *, lambda_dice: float = 1.0, lambda_ce: float = 1.0) -> None:
        super().__init__()
        self.dice_ce = DiceCELoss(
            to_onehot_y=True, softmax=True, lambda_dice=lambda_dice, lambda_ce=lambda_ce
        )

    def forward(self, mask_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.dice_ce(mask_logits, mask.long())


class DFSLoss(nn.Module):
    """The DFS model's combined loss: Dice-CE on the mask + ``risk_weight`` x BCE on the risk.

    ``forward((mask_logits, risk_logits), mask, risk) -> scalar``. With binary risk logits
    ``[0, z]`` the cross-entropy equals the BCE of ``sigmoid(z)``.

    Args:
        risk_weight: weight of the risk term. Default 1.0.
    """

    def __init__(self, *, risk_weight: float = 1.0) -> None:
        super().__init__()
        if not risk_weight >= 0:
            raise ValueError(f"risk_weight must be >= 0, got {risk_weight!r}")
        self.segmentation = SegmentationLoss()
        self.risk_weight = float(risk_weight)

    def forward(
        self, outputs: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor, risk: torch.Tensor
    ) -> torch.Tensor:
        mask_logits, risk_logits = outputs
        risk_loss = nn.functional.cross_entropy(risk_logits, risk.long())
        return self.segmentation(mask_logits, mask) + self.risk_weight * risk_loss


def build_loss(
    kind: str, *, focal_gamma: float = 2.0, class_counts: Sequence[int] | None = None
) -> nn.Module:
    """The training loss for a model kind (see ``models._registry.MODEL_KINDS``).

    Args:
        kind: ``"classification"`` (class-balanced focal loss), ``"segmentation"``
            (:class:`SegmentationLoss`) or ``"segmentation-risk"`` (:class:`DFSLoss`).
        focal_gamma: focal loss gamma (classification only). Default 2.0.
        class_counts: training rows per class, for the focal loss' weights (classification).

    Returns:
        A module called as ``loss(model_output, *targets)``.
    """
    if kind == "segmentation":
        return SegmentationLoss()
    if kind == "segmentation-risk":
        return DFSLoss()
    if kind != "classification":
        raise ValueError(
            f"unknown model kind {kind!r}; use classification, segmentation or segmentation-risk"
        )
    counts = list(class_counts) if class_counts is not None else None
    return build_focal_loss(gamma=focal_gamma, class_counts=counts)


def model_loss(
    model: nn.Module,
    inputs: Sequence[torch.Tensor],
    target: torch.Tensor,
    criterion: nn.Module,
) -> torch.Tensor:
    """The training loss of ``model`` on one batch.

    A model that defines ``training_loss(*inputs, target=, criterion=)`` (e.g. CMUS-Net's
    weighted sum over auxiliary and fused heads) computes its own loss from ``criterion``;
    every other model gets ``criterion(model(*inputs), target)``. An Opacus
    ``GradSampleModule`` is looked through (its hooks sit on the inner layers, so per-sample
    gradients stay exact).

    Args:
        model: the network, possibly wrapped by Opacus.
        inputs: the batch's input tensors, in the model's order.
        target: class indices ``(B,)``.
        criterion: per-head loss, e.g. :class:`SoftmaxFocalLoss`.
    """
    inner = getattr(model, "_module", model)
    own = getattr(inner, "training_loss", None)
    if callable(own):
        return own(*inputs, target=target, criterion=criterion)
    return criterion(model(*inputs), target)
