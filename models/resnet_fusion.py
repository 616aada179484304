"""Per-modality backbones with a fusion head: the cervical lymph-node study's network.

The lymph-node study (three hospitals; 2D grey-scale, colour Doppler (CDFI) and elastography
ultrasound; metastatic / lymphoma / benign) trains an ImageNet-style ResNet per modality and
fuses them, and compares the fused model with single-modality ResNets (the registry's
``single_modality`` model with one modality)::

    x_1 (B, C, H, W) ──> backbone_1 ──> f_1 (B, D) ─┐
    x_2 (B, C, H, W) ──> backbone_2 ──> f_2 (B, D) ─┼─> concat (B, M*D) ──> dropout ──> FC
    x_3 (B, C, H, W) ──> backbone_3 ──> f_3 (B, D) ─┘         ──> logits (B, num_classes)

Unlike MUF-Net the backbones do NOT share weights: 2D grey-scale, colour Doppler and
elastography images look nothing alike, so each modality gets its own feature extractor
(and its own BatchNorm statistics).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from models._heads import (
    ClassifierHead,
    check_drop_rate,
    check_num_classes,
    finish,
    split_modality_mask,
)
from models._registry import ModelConfigError, register_model
from models.backbones import backbone_out_features, create_backbone

__all__ = ["ResNetFusionNet", "resnet_fusion"]


def _fusion_problems(num_classes: int, drop_rate: float, num_modalities: int) -> list[str]:
    problems = check_num_classes(num_classes) + check_drop_rate(drop_rate)
    if isinstance(num_modalities, bool) or not isinstance(num_modalities, int):
        problems.append(f"num_modalities must be an integer >= 2, got {num_modalities!r}")
    elif num_modalities < 2:
        problems.append(
            f"num_modalities must be >= 2 for fusion, got {num_modalities}; "
            "use the 'single_modality' model for one modality"
        )
    return problems


class ResNetFusionNet(ClassifierHead):
    """One backbone per modality, concatenated pooled features, dropout, FC.

    Args:
        backbones: one feature extractor per modality, each mapping ``(B, C, H, W)`` to
            ``(B, D)`` (timm ``num_classes=0`` models of the same architecture).
        num_classes: output logits; 0 leaves out the classifier (``forward`` returns the
            concatenated features).
        drop_rate: dropout on the concatenated features before the FC. Default 0.0.

    Attributes:
        num_modalities: ``M = len(backbones)``.
        num_features: ``M * D``, the width of the fused features.
    """

    def __init__(
        self, backbones: list[nn.Module], *, num_classes: int, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        problems = _fusion_problems(num_classes, drop_rate, len(backbones))
        widths: list[int] = []
        for index, backbone in enumerate(backbones):
            try:
                widths.append(backbone_out_features(backbone))
            except ModelConfigError as err:
                problems.append(f"backbone {index}: {err}")
        if len(set(widths)) > 1:
            problems.append(f"every backbone must give features of one width, got {widths}")
        if problems:
            raise ModelConfigError("cannot build ResNetFusionNet: " + "; ".join(problems))
        self.num_classes = num_classes
        self.num_modalities = len(backbones)
        self.branch_features = widths[0]
        self.num_features = self.num_modalities * self.branch_features
        self.pretrained_cfg = dict(getattr(backbones[0], "pretrained_cfg", {}) or {})
        self.backbones = nn.ModuleList(backbones)
        self._init_head(num_classes=num_classes, drop_rate=drop_rate)

    def modality_features(self, *xs: torch.Tensor) -> torch.Tensor:
        """Per-modality pooled features ``(B, M, D)`` from one ``(B, C, H, W)`` tensor each,
        optionally followed by a ``(B, M)`` modality mask (1 = present, 0 = missing).

        With a mask, a missing modality's features are zeroed and the present ones are scaled
        by ``M / (number present)`` (as inverted dropout), so the fused vector keeps its scale
        and the classifier sees only the modalities the row has.
        """
        images, mask = split_modality_mask("resnet_fusion", xs, self.num_modalities)
        feats = torch.stack([net(x) for net, x in zip(self.backbones, images, strict=True)], dim=1)
        if mask is None:
            return feats
        scale = mask * (self.num_modalities / mask.sum(dim=1, keepdim=True))  # (B, M)
        return feats * scale.unsqueeze(-1)

    def forward_features(self, *xs: torch.Tensor) -> torch.Tensor:
        """Fused features ``(B, M * D)`` from one ``(B, C, H, W)`` tensor per modality (and
        the optional ``(B, M)`` modality mask, see :meth:`modality_features`)."""
        return self.modality_features(*xs).flatten(1)


@register_model(handles_missing_modalities=True)
def resnet_fusion(
    *,
    num_classes: int,
    backbone: str,
    in_chans: int = 3,
    num_modalities: int = 3,
    dp_safe: bool = False,
    pretrained_path: str | os.PathLike[str] | None = None,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
) -> ResNetFusionNet:
    """The lymph-node study's fusion model: a backbone per modality, concatenation, FC.

    Args:
        num_classes: output logits (3: metastatic, lymphoma, benign).
        backbone: timm model name for every branch; the study uses an ImageNet-style ResNet
            (``"resnet18"``, the ``lymph-node`` preset's default).
        in_chans: channels of every modality's ``(B, C, H, W)`` tensor. Default 3.
        num_modalities: image tensors per sample (>= 2). Default 3 (2D, CDFI, elastography).
        dp_safe: GroupNorm, no in-place ops, for Opacus. Default False.
        pretrained_path: local weights file loaded into every branch; never downloads.
            Default None.
        drop_rate: dropout on the fused features before the FC. Default 0.0.
        drop_path_rate: backbone stochastic depth. Default 0.0.
    """
    problems = _fusion_problems(num_classes, drop_rate, num_modalities)
    if problems:  # checked before the (possibly slow) backbone builds
        raise ModelConfigError("cannot build resnet_fusion: " + "; ".join(problems))
    branches = [
        create_backbone(
            backbone,
            in_chans=in_chans,
            dp_safe=dp_safe,
            pretrained_path=pretrained_path,
            drop_path_rate=drop_path_rate,
        )
        for _ in range(num_modalities)
    ]
    model = ResNetFusionNet(branches, num_classes=num_classes, drop_rate=drop_rate)
    return finish(model, dp_safe=dp_safe)
