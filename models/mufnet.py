"""MUF-Net (multimodal ultrasound fusion) and the single-modality baseline.

MUF-Net, from the RCC WHO/ISUP grading study (B-mode + contrast-enhanced ultrasound)::

    x_1 (B, C, H, W) ──> backbone ──> f_1 (B, D) ──> attention ──> s_1 ─┐
    x_2 (B, C, H, W) ──> backbone ──> f_2 (B, D) ──> attention ──> s_2 ─┴─> softmax ──> alpha, beta
                        (one module,                (one MLP D -> D/r -> 1,
                         shared weights)             shared weights)
    fused = alpha * f_1 + beta * f_2 (B, D) ──> dropout ──> FC ──> logits (B, num_classes)

Both models return logits; the softmax of the paper's head is applied by the loss during
training (``models.losses``) and by the caller at inference (``logits.softmax(dim=1)``).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from models._heads import (
    ClassifierHead,
    check_drop_rate,
    check_inputs,
    check_num_classes,
    finish,
    split_modality_mask,
)
from models._registry import ModelConfigError, register_model
from models.backbones import backbone_out_features, create_backbone

__all__ = [
    "MUFNet",
    "SingleModalityNet",
    "build_single_backbone_net",
    "mufnet",
    "single_modality",
]


def _fusion_problems(
    num_classes: int, drop_rate: float, num_modalities: int, attn_reduction: int
) -> list[str]:
    problems = check_num_classes(num_classes) + check_drop_rate(drop_rate)
    if isinstance(num_modalities, bool) or not isinstance(num_modalities, int):
        problems.append(f"num_modalities must be an integer >= 2, got {num_modalities!r}")
    elif num_modalities < 2:
        problems.append(
            f"num_modalities must be >= 2 for fusion, got {num_modalities}; "
            "use the 'single_modality' model for one modality"
        )
    if isinstance(attn_reduction, bool) or not isinstance(attn_reduction, int):
        problems.append(f"attn_reduction must be an integer >= 1, got {attn_reduction!r}")
    elif attn_reduction < 1:
        problems.append(f"attn_reduction must be >= 1, got {attn_reduction}")
    return problems


class MUFNet(ClassifierHead):
    """Shared-weight multimodal fusion with adaptive per-sample modality weights.

    Args:
        backbone: feature extractor mapping ``(B, C, H, W)`` to ``(B, D)``, a timm
            ``num_classes=0`` model (see ``models.backbones.create_backbone``); applied to
            every modality with the same weights.
        num_classes: output logits; 0 leaves out the classifier (``forward`` returns fused
            features).
        num_modalities: image tensors per sample ``M`` (>= 2). Default 2.
        attn_reduction: hidden width of the attention MLP is ``max(1, D // attn_reduction)``.
            Default 16.
        drop_rate: dropout on the fused features before the classifier. Default 0.0.

        joint_batch: run all modalities through the backbone in ONE call (concatenated along
            the batch). Default True. With BatchNorm this is needed for correctness: the shared
            running statistics mix all modalities, so the batch statistics used in training
            must mix them too, otherwise eval-mode outputs drift from train-mode ones (measured:
            train loss 0.07 with eval-mode train AUC 0.78 on the dual-center data). The
            DP-safe build sets it False: Opacus computes per-sample gradients per call, and
            GroupNorm has no batch statistics to keep consistent.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        num_classes: int,
        num_modalities: int = 2,
        attn_reduction: int = 16,
        drop_rate: float = 0.0,
        joint_batch: bool = True,
    ) -> None:
        super().__init__()
        problems = _fusion_problems(num_classes, drop_rate, num_modalities, attn_reduction)
        width = 0
        try:
            width = backbone_out_features(backbone)
        except ModelConfigError as err:
            problems.append(str(err))
        if problems:
            raise ModelConfigError("cannot build MUFNet: " + "; ".join(problems))
        self.num_classes = num_classes
        self.num_modalities = num_modalities
        self.num_features = width
        self.pretrained_cfg = dict(getattr(backbone, "pretrained_cfg", {}) or {})
        self.backbone = backbone
        self.joint_batch = joint_batch
        hidden = max(1, self.num_features // attn_reduction)
        self.attention = nn.Sequential(
            nn.Linear(self.num_features, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )
        self._init_head(num_classes=num_classes, drop_rate=drop_rate)

    def _fuse(self, xs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        xs, mask = split_modality_mask("mufnet", xs, self.num_modalities)
        if self.joint_batch:
            batch = xs[0].shape[0]
            joint = self.backbone(torch.cat(xs, dim=0))  # (M*B, D), modality-major
            feats = joint.reshape(len(xs), batch, -1).transpose(0, 1)  # (B, M, D)
        else:
            feats = torch.stack([self.backbone(x) for x in xs], dim=1)  # (B, M, D)
        scores = torch.cat([self.attention(feats[:, m]) for m in range(len(xs))], dim=1)
        if mask is not None:  # a missing modality gets weight 0; the others renormalise
            scores = scores.masked_fill(mask == 0, float("-inf"))
        weights = scores.softmax(dim=1)  # (B, M), each row sums to 1
        fused = (weights.unsqueeze(-1) * feats).sum(dim=1)  # (B, D)
        return fused, weights

    def forward_features(self, *xs: torch.Tensor) -> torch.Tensor:
        """Fused features ``(B, num_features)`` from one ``(B, C, H, W)`` tensor per modality,
        optionally followed by a ``(B, M)`` modality mask (1 = present): a missing modality's
        attention weight is 0 and the present modalities' weights are renormalised to sum to 1.
        """
        return self._fuse(xs)[0]

    def fusion_weights(self, *xs: torch.Tensor) -> torch.Tensor:
        """Per-sample modality weights ``(B, M)`` (alpha, beta, ...), each row summing to 1
        (0 for a modality the optional mask marks missing).

        Runs the backbone; call under ``torch.no_grad()`` and in eval mode for interpretation.
        """
        return self._fuse(xs)[1]


class SingleModalityNet(ClassifierHead):
    """One backbone + dropout + FC: the study's single-modality baseline.

    Args:
        backbone: feature extractor mapping ``(B, C, H, W)`` to ``(B, D)``, a timm
            ``num_classes=0`` model.
        num_classes: output logits; 0 leaves out the classifier.
        drop_rate: dropout on the pooled features before the classifier. Default 0.0.
    """

    num_modalities = 1

    def __init__(self, backbone: nn.Module, *, num_classes: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        problems = check_num_classes(num_classes) + check_drop_rate(drop_rate)
        width = 0
        try:
            width = backbone_out_features(backbone)
        except ModelConfigError as err:
            problems.append(str(err))
        if problems:
            raise ModelConfigError("cannot build SingleModalityNet: " + "; ".join(problems))
        self.num_classes = num_classes
        self.num_features = width
        self.pretrained_cfg = dict(getattr(backbone, "pretrained_cfg", {}) or {})
        self.backbone = backbone
        self._init_head(num_classes=num_classes, drop_rate=drop_rate)

    def forward_features(self, *xs: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(B, num_features)`` from one ``(B, C, H, W)`` tensor."""
        check_inputs("single_modality", xs, 1)
        return self.backbone(xs[0])


@register_model(handles_missing_modalities=True)
def mufnet(
    *,
    num_classes: int,
    backbone: str,
    in_chans: int = 3,
    num_modalities: int = 2,
    dp_safe: bool = False,
    pretrained_path: str | os.PathLike[str] | None = None,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    attn_reduction: int = 16,
) -> MUFNet:
    """MUF-Net: shared-weight backbone per modality, attention-weighted sum, FC.

    Args:
        num_classes: output logits (2 for low vs high RCC grade).
        backbone: timm model name; the study uses ``"efficientnet_b3"`` at 300 px.
        in_chans: channels of every modality's ``(B, C, H, W)`` tensor. Default 3.
        num_modalities: image tensors per sample (>= 2). Default 2 (B-mode, CEUS).
        dp_safe: GroupNorm, no in-place ops, for Opacus. Default False.
        pretrained_path: local backbone weights file; never downloads. Default None.
        drop_rate: dropout on the fused features before the FC. Default 0.0.
        drop_path_rate: backbone stochastic depth. Default 0.0.
        attn_reduction: attention MLP is ``D -> D // attn_reduction -> 1``. Default 16.
    """
    problems = _fusion_problems(num_classes, drop_rate, num_modalities, attn_reduction)
    if problems:  # checked before the (possibly slow) backbone build
        raise ModelConfigError("cannot build mufnet: " + "; ".join(problems))
    net = create_backbone(
        backbone,
        in_chans=in_chans,
        dp_safe=dp_safe,
        pretrained_path=pretrained_path,
        drop_path_rate=drop_path_rate,
    )
    model = MUFNet(
        net,
        num_classes=num_classes,
        num_modalities=num_modalities,
        attn_reduction=attn_reduction,
        drop_rate=drop_rate,
        joint_batch=not dp_safe,
    )
    return finish(model, dp_safe=dp_safe)


@register_model
def single_modality(
    *,
    num_classes: int,
    backbone: str,
    in_chans: int = 3,
    dp_safe: bool = False,
    pretrained_path: str | os.PathLike[str] | None = None,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
) -> SingleModalityNet:
    """Single-modality baseline: one backbone + dropout + FC; takes one ``(B, C, H, W)`` tensor.

    Args:
        num_classes: output logits.
        backbone: timm model name.
        in_chans: image channels. Default 3.
        dp_safe: GroupNorm, no in-place ops, for Opacus. Default False.
        pretrained_path: local backbone weights file; never downloads. Default None.
        drop_rate: dropout on the pooled features before the FC. Default 0.0.
        drop_path_rate: backbone stochastic depth. Default 0.0.
    """
    return build_single_backbone_net(
        "single_modality",
        num_classes=num_classes,
        backbone=backbone,
        in_chans=in_chans,
        dp_safe=dp_safe,
        pretrained_path=pretrained_path,
        drop_rate=drop_rate,
        drop_path_rate=drop_path_rate,
    )


def build_single_backbone_net(
    name: str,
    *,
    num_classes: int,
    backbone: str,
    in_chans: int,
    dp_safe: bool,
    pretrained_path: str | os.PathLike[str] | None,
    drop_rate: float,
    drop_path_rate: float,
) -> SingleModalityNet:
    """One backbone + dropout + FC, checked; ``name`` is the registered model building it."""
    problems = check_num_classes(num_classes) + check_drop_rate(drop_rate)
    if problems:
        raise ModelConfigError(f"cannot build {name}: " + "; ".join(problems))
    net = create_backbone(
        backbone,
        in_chans=in_chans,
        dp_safe=dp_safe,
        pretrained_path=pretrained_path,
        drop_path_rate=drop_path_rate,
    )
    model = SingleModalityNet(net, num_classes=num_classes, drop_rate=drop_rate)
    return finish(model, dp_safe=dp_safe)
