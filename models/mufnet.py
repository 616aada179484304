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
from typing import TypeVar

import torch
from torch import nn

from models._registry import ModelConfigError, register_model
from models.backbones import backbone_out_features, create_backbone, dp_safety_problems

__all__ = ["MUFNet", "SingleModalityNet", "mufnet", "single_modality"]

_M = TypeVar("_M", bound=nn.Module)


def _classifier(num_features: int, num_classes: int) -> nn.Module:
    return nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()


def _check_num_classes(num_classes: int) -> list[str]:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        return [f"num_classes must be an integer >= 0 (0 = no classifier), got {num_classes!r}"]
    return []


def _check_drop_rate(drop_rate: float) -> list[str]:
    if not isinstance(drop_rate, int | float) or not 0 <= drop_rate < 1:
        return [f"drop_rate must be in [0, 1), got {drop_rate!r}"]
    return []


def _fusion_problems(
    num_classes: int, drop_rate: float, num_modalities: int, attn_reduction: int
) -> list[str]:
    problems = _check_num_classes(num_classes) + _check_drop_rate(drop_rate)
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


def _check_inputs(model: str, xs: tuple[torch.Tensor, ...], expected: int) -> None:
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


class MUFNet(nn.Module):
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
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = _classifier(self.num_features, num_classes)

    def _fuse(self, xs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        _check_inputs("mufnet", xs, self.num_modalities)
        if self.joint_batch:
            batch = xs[0].shape[0]
            joint = self.backbone(torch.cat(xs, dim=0))  # (M*B, D), modality-major
            feats = joint.reshape(len(xs), batch, -1).transpose(0, 1)  # (B, M, D)
        else:
            feats = torch.stack([self.backbone(x) for x in xs], dim=1)  # (B, M, D)
        scores = torch.cat([self.attention(feats[:, m]) for m in range(len(xs))], dim=1)
        weights = scores.softmax(dim=1)  # (B, M), each row sums to 1
        fused = (weights.unsqueeze(-1) * feats).sum(dim=1)  # (B, D)
        return fused, weights

    def forward_features(self, *xs: torch.Tensor) -> torch.Tensor:
        """Fused features ``(B, num_features)`` from one ``(B, C, H, W)`` tensor per modality."""
        return self._fuse(xs)[0]

    def fusion_weights(self, *xs: torch.Tensor) -> torch.Tensor:
        """Per-sample modality weights ``(B, M)`` (alpha, beta, ...), each row summing to 1.

        Runs the backbone; call under ``torch.no_grad()`` and in eval mode for interpretation.
        """
        return self._fuse(xs)[1]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Dropout + classifier on fused features ``(B, num_features)``.

        Args:
            x: fused features ``(B, num_features)``.
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
        problems = _check_num_classes(num_classes)
        if problems:
            raise ModelConfigError(problems[0])
        self.num_classes = num_classes
        self.fc = _classifier(self.num_features, num_classes)


class SingleModalityNet(nn.Module):
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
        problems = _check_num_classes(num_classes) + _check_drop_rate(drop_rate)
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
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = _classifier(self.num_features, num_classes)

    def forward_features(self, *xs: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(B, num_features)`` from one ``(B, C, H, W)`` tensor."""
        _check_inputs("single_modality", xs, 1)
        return self.backbone(xs[0])

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Dropout + classifier on features ``(B, num_features)``; ``pre_logits`` skips the FC."""
        x = self.head_drop(x)
        return x if pre_logits else self.fc(x)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` from one ``(B, C, H, W)`` tensor."""
        return self.forward_head(self.forward_features(*xs))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one for ``num_classes`` outputs (0 = none)."""
        problems = _check_num_classes(num_classes)
        if problems:
            raise ModelConfigError(problems[0])
        self.num_classes = num_classes
        self.fc = _classifier(self.num_features, num_classes)


def _finish(model: _M, *, dp_safe: bool) -> _M:
    if dp_safe:
        problems = dp_safety_problems(model)
        if problems:
            raise ModelConfigError("DP-safe build is not DP-safe: " + "; ".join(problems))
    return model


@register_model
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
    return _finish(model, dp_safe=dp_safe)


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
    problems = _check_num_classes(num_classes) + _check_drop_rate(drop_rate)
    if problems:
        raise ModelConfigError("cannot build single_modality: " + "; ".join(problems))
    net = create_backbone(
        backbone,
        in_chans=in_chans,
        dp_safe=dp_safe,
        pretrained_path=pretrained_path,
        drop_path_rate=drop_path_rate,
    )
    model = SingleModalityNet(net, num_classes=num_classes, drop_rate=drop_rate)
    return _finish(model, dp_safe=dp_safe)
