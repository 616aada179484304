"""The timm-style classifier head shared by the image models (MUF-Net, the single-modality
baseline and the per-modality ResNet fusion), and the argument checks they share."""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import nn

from models._registry import ModelConfigError
from models.backbones import dp_safety_problems

__all__ = [
    "ClassifierHead",
    "check_drop_rate",
    "check_inputs",
    "check_num_classes",
    "split_modality_mask",
    "classifier",
    "finish",
]

_M = TypeVar("_M", bound=nn.Module)


def classifier(num_features: int, num_classes: int) -> nn.Module:
    return nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()


def check_num_classes(num_classes: int) -> list[str]:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        return [f"num_classes must be an integer >= 0 (0 = no classifier), got {num_classes!r}"]
    return []


def check_drop_rate(drop_rate: float) -> list[str]:
    if not isinstance(drop_rate, int | float) or not 0 <= drop_rate < 1:
        return [f"drop_rate must be in [0, 1), got {drop_rate!r}"]
    return []


def check_inputs(model: str, xs: tuple[torch.Tensor, ...], expected: int) -> None:
    if len(xs) != expected:
        raise ValueError(
            f"{model} takes {expected} image tensor(s), one (B, C, H, W) tensor per modality, "
            f"got {len(xs)}"
        )
    shapes = [tuple(x.shape) for x in xs]
    if any(len(s) != 4 for s in shapes) or len({s[0] for s in shapes}) != 1:
        raise ValueError(
            f"{model} needs 4-D (B, C, H, W) tensors with the same batch size B, got {shapes}"
        )


def split_modality_mask(
    model: str, xs: tuple[torch.Tensor, ...], expected: int
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
    """``(images, mask)`` from a fusion model's inputs: ``M`` images, optionally followed by
    a ``(B, M)`` modality mask (1 = present, 0 = missing); the mask is None when not given.

    A row whose mask is all zeros is treated as all present (the manifest check refuses rows
    without any image, so this only guards hand-made inputs against NaN).

    Raises:
        ValueError: wrong number or shapes of tensors (see :func:`check_inputs`).
    """
    mask = None
    if len(xs) == expected + 1 and xs[-1].ndim == 2:
        images, mask = xs[:-1], xs[-1]
        if mask.shape != (images[0].shape[0], expected):
            raise ValueError(
                f"{model}: the modality mask must have shape (B, {expected}) = "
                f"({images[0].shape[0]}, {expected}), got {tuple(mask.shape)}"
            )
        mask = mask.to(images[0].dtype)
        empty = mask.sum(dim=1, keepdim=True) == 0
        mask = torch.where(empty, torch.ones_like(mask), mask)
        xs = images
    check_inputs(model, xs, expected)
    return xs, mask


def finish(model: _M, *, dp_safe: bool) -> _M:
    if dp_safe:
        problems = dp_safety_problems(model)
        if problems:
            raise ModelConfigError("DP-safe build is not DP-safe: " + "; ".join(problems))
    return model


class ClassifierHead(nn.Module):
    """Dropout + FC head with the timm interface (``forward_head``, ``get_classifier``,
    ``reset_classifier``); a subclass defines ``forward_features`` and sets ``num_features``
    before calling :meth:`_init_head` (last, so that ``fc`` stays the last registered module).
    """

    num_classes: int
    num_features: int
    head_drop: nn.Module
    fc: nn.Module

    def _init_head(self, *, num_classes: int, drop_rate: float) -> None:
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = classifier(self.num_features, num_classes)

    def forward_features(self, *xs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Dropout + classifier on features ``(B, num_features)``.

        Args:
            x: features ``(B, num_features)``.
            pre_logits: return the features after dropout instead of logits. Default False.
        """
        x = self.head_drop(x)
        return x if pre_logits else self.fc(x)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` from one ``(B, C, H, W)`` tensor per modality."""
        return self.forward_head(self.forward_features(*xs))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one for ``num_classes`` outputs (0 = none)."""
        problems = check_num_classes(num_classes)
        if problems:
            raise ModelConfigError(problems[0])
        self.num_classes = num_classes
        self.fc = classifier(self.num_features, num_classes)
