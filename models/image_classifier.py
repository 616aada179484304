"""``image_classifier``: one timm backbone + FC, for ad-hoc single-modality image tasks.

The generic model behind ``fedfusion simulate --manifest CSV --model image-classifier
--modalities COLUMN ...``: any timm backbone (global pooling, ``num_classes=0``) followed by
dropout and a linear classifier::

    x (B, C, H, W) ──> backbone ──> (B, D) ──> dropout ──> FC ──> logits (B, num_classes)

It is the same network as the seed studies' single-modality baseline
(:class:`models.mufnet.SingleModalityNet`); the separate registry name keeps ad-hoc tasks
apart from the study presets in listings, run stores and checkpoints.
"""

from __future__ import annotations

import os

from models._registry import register_model
from models.mufnet import SingleModalityNet, build_single_backbone_net

__all__ = ["image_classifier"]


@register_model
def image_classifier(
    *,
    num_classes: int,
    backbone: str,
    in_chans: int = 3,
    dp_safe: bool = False,
    pretrained_path: str | os.PathLike[str] | None = None,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
) -> SingleModalityNet:
    """One timm backbone + dropout + FC; takes one ``(B, C, H, W)`` tensor.

    Args:
        num_classes: output logits.
        backbone: timm model name (e.g. ``"resnet18"``, ``"efficientnet_b0"``).
        in_chans: image channels. Default 3.
        dp_safe: GroupNorm, no in-place ops, for Opacus. Default False.
        pretrained_path: local backbone weights file; never downloads. Default None.
        drop_rate: dropout on the pooled features before the FC. Default 0.0.
        drop_path_rate: backbone stochastic depth. Default 0.0.
    """
    return build_single_backbone_net(
        "image_classifier",
        num_classes=num_classes,
        backbone=backbone,
        in_chans=in_chans,
        dp_safe=dp_safe,
        pretrained_path=pretrained_path,
        drop_rate=drop_rate,
        drop_path_rate=drop_path_rate,
    )
