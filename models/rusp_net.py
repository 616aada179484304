"""RUSP-Net (kidney tumour segmentation, 2D CT) and the DFS model (RUSP-Net + clinical GRU).

RUSP-Net, after the DFS study: a residual U-Net built from MONAI blocks
(``monai.networks.blocks.ResidualUnit``), with

* an encoder of residual units, each level halving the resolution with a stride-2 unit;
* a *pyramid* at the bottleneck: three parallel 3x3 convolutions with dilations 1, 2 and 3
  whose outputs are concatenated, fused by a 1x1 convolution and added to the input;
* a decoder that upsamples (bilinear, no parameters), concatenates the encoder's skip and
  applies a residual unit; the last ``dilated_decoder_levels`` decoder levels use dilated
  (dilation 2) 3x3 convolutions;
* a 1x1 convolution to ``num_classes`` mask logits ``(B, K, H, W)`` (K = 2: background, tumour).

Normalisation is InstanceNorm with affine parameters by default (``norm="instance"``): no
running statistics, so training and evaluation behave alike and FedAvg has no statistics to
average (with BatchNorm, ``norm="batch"``, the few local steps of a federated round leave the
running statistics far from the batch statistics, and the evaluated masks were empty in our
runs). ``dp_safe=True`` turns BatchNorm into GroupNorm; instance and group norm are already
accepted by Opacus. Activations are ReLU (not in place): MONAI's default PReLU has a parameter
Opacus cannot compute per-sample gradients for.

The DFS model (``dfs``) runs RUSP-Net on the CT slice and the study's clinical GRU
(:class:`models.clinical.ClinicalGRU`, its 32-unit last hidden state) on the clinical features
and fuses them into a risk probability: the fusion head takes features of the *predicted*
mask (soft tumour area, peak and mean confidence), the GRU embedding and, optionally, the
pooled bottleneck features. It returns ``(mask logits (B, K, H, W), risk logits (B, 2))``
with the binary risk logits ``[0, z]`` (``softmax[:, 1] = sigmoid(z)``, as the clinical
models) and trains with :class:`models.losses.DFSLoss` (Dice + cross-entropy on the mask,
BCE on the risk).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from torch import nn
from torch.nn import functional as F

from models._registry import ModelConfigError, PretrainedWeightsError, register_model
from models.clinical import ClinicalGRU

__all__ = ["RUSPNet", "DFSNet", "rusp_net", "dfs"]

_ACT = ("RELU", {"inplace": False})
_PYRAMID_DILATIONS = (1, 2, 3)


_NORMS = ("instance", "batch", "group")


def _norm(channels: int, norm: str) -> tuple[str, dict[str, object]]:
    if norm == "instance":
        return ("INSTANCE", {"affine": True})
    if norm == "batch":
        return ("BATCH", {})
    return ("GROUP", {"num_groups": math.gcd(8, channels)})


def _check_images(model: str, xs: tuple[torch.Tensor, ...], expected: int) -> None:
    if len(xs) != expected:
        what = "one (B, C, H, W) tensor per modality (the CT slice)"
        extra = " and one (B, F) clinical feature tensor" if expected == 2 else ""
        raise ValueError(f"{model} takes {what}{extra}, got {len(xs)} tensors")
    if xs[0].ndim != 4:
        raise ValueError(f"{model} needs a (B, C, H, W) CT slice, got shape {tuple(xs[0].shape)}")


class _DilatedPyramid(nn.Module):
    """Three parallel 3x3 convolutions (dilations 1, 2, 3), concatenated, fused 1x1, + input.

    ``(B, C, h, w) -> (B, C, h, w)``.
    """

    def __init__(self, channels: int, *, norm_name: str, dropout: float) -> None:
        super().__init__()
        norm = _norm(channels, norm_name)
        self.branches = nn.ModuleList(
            Convolution(2, channels, channels, kernel_size=3, dilation=d, norm=norm, act=_ACT)
            for d in _PYRAMID_DILATIONS
        )
        self.fuse = Convolution(
            2,
            channels * len(_PYRAMID_DILATIONS),
            channels,
            kernel_size=1,
            norm=norm,
            act=_ACT,
            dropout=dropout or None,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fuse(torch.cat([branch(x) for branch in self.branches], dim=1))


class RUSPNet(nn.Module):
    """Residual U-Net with a dilated pyramid bottleneck and dilated last decoder levels.

    Args:
        num_classes: mask classes K including the background (2: background / tumour).
        in_chans: input channels (1 for a CT slice). Default 1.
        channels: width of each encoder level, shallow to deep; the resolution halves
            ``len(channels) - 1`` times. Default (16, 32, 64, 128, 256).
        dilated_decoder_levels: how many of the last (full-resolution side) decoder levels use
            dilation-2 convolutions. Default 2.
        norm: ``"instance"`` (affine InstanceNorm), ``"batch"`` or ``"group"`` (GroupNorm, up to
            8 groups). Default "instance".
        dp_safe: build for Opacus: ``norm="batch"`` becomes GroupNorm. Default False.
        drop_rate: dropout in the bottleneck pyramid. Default 0.0.

    ``forward(x)``: ``(B, in_chans, H, W) -> (B, K, H, W)`` mask logits (any H, W; sizes that
    are not multiples of ``2 ** (len(channels) - 1)`` are handled by resizing to the skip).
    ``forward_features(x)``: the pooled bottleneck ``(B, num_features)``.
    """

    kind = "segmentation"
    num_modalities = 1
    model_name = "rusp_net"

    def __init__(
        self,
        *,
        num_classes: int,
        in_chans: int = 1,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        dilated_decoder_levels: int = 2,
        norm: str = "instance",
        dp_safe: bool = False,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        chans = tuple(int(c) for c in channels)
        norm = "group" if dp_safe and norm == "batch" else norm
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.channels = chans
        self.num_features = chans[-1]
        self.encoder = nn.ModuleList()
        previous = in_chans
        for level, width in enumerate(chans):
            self.encoder.append(
                ResidualUnit(
                    2,
                    previous,
                    width,
                    strides=1 if level == 0 else 2,
                    norm=_norm(width, norm),
                    act=_ACT,
                )
            )
            previous = width
        self.pyramid = _DilatedPyramid(chans[-1], norm_name=norm, dropout=drop_rate)
        self.decoder = nn.ModuleList()
        levels = len(chans) - 1
        for step, level in enumerate(range(levels - 1, -1, -1)):  # deep -> shallow
            dilation = 2 if step >= levels - dilated_decoder_levels else 1
            self.decoder.append(
                ResidualUnit(
                    2,
                    chans[level + 1] + chans[level],
                    chans[level],
                    dilation=dilation,
                    norm=_norm(chans[level], norm),
                    act=_ACT,
                )
            )
        self.head = Convolution(2, chans[0], num_classes, kernel_size=1, conv_only=True)

    def encode_decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mask logits (B, K, H, W), bottleneck (B, C_last, h, w))`` of a CT slice."""
        skips = []
        for unit in self.encoder:
            x = unit(x)
            skips.append(x)
        bottleneck = self.pyramid(skips.pop())
        x = bottleneck
        for unit in self.decoder:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = unit(torch.cat([x, skip], dim=1))
        return self.head(x), bottleneck

    def forward_features(self, *xs: torch.Tensor) -> torch.Tensor:
        """Pooled bottleneck features ``(B, num_features)``."""
        _check_images(self.model_name, xs, 1)
        return self.encode_decode(xs[0])[1].mean(dim=(2, 3))

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        """Mask logits ``(B, num_classes, H, W)`` from one ``(B, in_chans, H, W)`` slice."""
        _check_images(self.model_name, xs, 1)
        return self.encode_decode(xs[0])[0]

    def example_inputs(
        self, *, batch: int, image_size: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, ...]:
        """Random inputs of the right shapes (for contract tests)."""
        return (torch.randn(batch, self.in_chans, image_size, image_size, generator=generator),)


def mask_features(mask_logits: torch.Tensor) -> torch.Tensor:
    """Features of the predicted mask ``(B, 3)``: the log of the soft foreground area (share
    of the image, + 1e-3), the peak foreground probability, and the mean probability inside
    the soft foreground. The log puts the area on a unit scale (a tumour of 1% of the slice
    gives -4.5, of 10% -2.3); the raw share varies by a few hundredths, too little for SGD to
    pick up in a few federated rounds.

    Args:
        mask_logits: ``(B, K, H, W)``; classes 1..K-1 are foreground.
    """
    fg = torch.softmax(mask_logits, dim=1)[:, 1:].sum(dim=1)  # (B, H, W)
    area = torch.log(fg.mean(dim=(1, 2)) + 1e-3)
    peak = fg.amax(dim=(1, 2))
    inside = (fg * fg).sum(dim=(1, 2)) / (fg.sum(dim=(1, 2)) + 1e-6)
    return torch.stack([area, peak, inside], dim=1)


class DFSNet(nn.Module):
    """RUSP-Net on the CT slice + the clinical GRU on the features, fused into a risk.

    Args:
        num_classes: risk classes (2: the risk is one sigmoid output, logits ``[0, z]``).
        in_features: clinical input width ``F`` (the GRU's sequence length).
        in_chans: CT channels. Default 1.
        seg_classes: mask classes including the background. Default 2.
        channels: RUSP-Net widths. Default (16, 32, 64, 128, 256).
        hidden_size: GRU units. Default 32.
        fusion_hidden: width of the fusion layer. Default 32.
        fuse_bottleneck: also fuse RUSP-Net's pooled bottleneck features ``(B, channels[-1])``.
            Default False: on the synthetic CT data they slowed the risk down (pooled training,
            3 epochs: AUC 0.63 with them, 0.91 without), being many, large and nearly the same
            for every slice.
        norm: RUSP-Net normalisation (see :class:`RUSPNet`). Default "instance".
        dp_safe: Opacus' DPGRU (and GroupNorm for ``norm="batch"``). Default False.
        drop_rate: dropout on the GRU state and in the fusion head. Default 0.0.

    ``forward(ct, features)``: ``(B, in_chans, H, W)``, ``(B, F)`` -> ``(mask logits (B,
    seg_classes, H, W), risk logits (B, 2))``. ``forward_features`` gives the fused features
    ``(B, num_features)`` before the risk layer.
    """

    kind = "segmentation-risk"
    num_modalities = 1
    model_name = "dfs"

    def __init__(
        self,
        *,
        num_classes: int,
        in_features: int,
        in_chans: int = 1,
        seg_classes: int = 2,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        hidden_size: int = 32,
        fusion_hidden: int = 32,
        fuse_bottleneck: bool = False,
        norm: str = "instance",
        dp_safe: bool = False,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_features = in_features
        self.in_chans = in_chans
        self.segmenter = RUSPNet(
            num_classes=seg_classes,
            in_chans=in_chans,
            channels=channels,
            norm=norm,
            dp_safe=dp_safe,
        )
        self.clinical = ClinicalGRU(
            num_classes=0,
            in_features=in_features,
            hidden_size=hidden_size,
            drop_rate=drop_rate,
            dp_safe=dp_safe,
        )
        self.fuse_bottleneck = fuse_bottleneck
        width = 3 + hidden_size + (self.segmenter.num_features if fuse_bottleneck else 0)
        # tanh, not ReLU: the first SGD steps (driven by the large segmentation loss) left every
        # ReLU unit of the fusion dead and the risk constant in our runs.
        self.fusion = nn.Sequential(
            nn.Linear(width, fusion_hidden), nn.Tanh(), nn.Dropout(drop_rate)
        )
        self.num_features = fusion_hidden
        self.fc = nn.Linear(fusion_hidden, 1 if num_classes == 2 else num_classes)

    def _fused(self, ct: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask_logits, bottleneck = self.segmenter.encode_decode(ct)
        clinical = self.clinical.forward_head(self.clinical.forward_features(features))
        parts = [mask_features(mask_logits), clinical]
        if self.fuse_bottleneck:
            parts.insert(1, bottleneck.mean(dim=(2, 3)))
        fused = torch.cat(parts, dim=1)
        return mask_logits, self.fusion(fused)

    def forward_features(self, *xs: torch.Tensor) -> torch.Tensor:
        """Fused features ``(B, num_features)`` from ``(ct, features)``."""
        _check_images(self.model_name, xs, 2)
        return self._fused(*xs)[1]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Risk logits ``(B, num_classes)`` (``[0, z]`` for a binary risk)."""
        z = self.fc(x)
        return torch.cat([torch.zeros_like(z), z], dim=1) if self.num_classes == 2 else z

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mask logits (B, K, H, W), risk logits (B, num_classes))`` from ``(ct, features)``."""
        _check_images(self.model_name, xs, 2)
        mask_logits, fused = self._fused(*xs)
        return mask_logits, self.forward_head(fused)

    def example_inputs(
        self, *, batch: int, image_size: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, ...]:
        """Random ``(ct, features)`` of the right shapes (for contract tests)."""
        ct = torch.randn(batch, self.in_chans, image_size, image_size, generator=generator)
        return ct, torch.randn(batch, self.in_features, generator=generator)


def _common_problems(
    num_classes: int,
    in_chans: int,
    channels: Sequence[int],
    drop_rate: float,
    norm: str,
    *,
    seg: bool,
) -> list[str]:
    problems = []
    if norm not in _NORMS:
        problems.append(f"norm must be one of {', '.join(_NORMS)}, got {norm!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        what = "mask classes including the background" if seg else "risk classes"
        problems.append(f"num_classes must be an integer >= 2 ({what}), got {num_classes!r}")
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        problems.append(f"in_chans must be an integer >= 1, got {in_chans!r}")
    if (
        not isinstance(channels, tuple | list)
        or len(channels) < 2
        or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in channels)
    ):
        problems.append(f"channels must be >= 2 integer widths >= 1, got {channels!r}")
    if not isinstance(drop_rate, int | float) or not 0 <= drop_rate < 1:
        problems.append(f"drop_rate must be in [0, 1), got {drop_rate!r}")
    return problems


def _load_whole_model(model: nn.Module, path: str | os.PathLike[str] | None) -> None:
    if path in (None, ""):
        return
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # type: ignore[arg-type]
        model.load_state_dict(state, strict=True)
    except (RuntimeError, OSError, KeyError, ValueError, AttributeError) as err:
        raise PretrainedWeightsError(
            f"could not load {str(path)!r} into {type(model).__name__} (a whole-model "
            f"state_dict of the same configuration is expected): {err}"
        ) from err


@register_model(kind="segmentation")
def rusp_net(
    *,
    num_classes: int,
    backbone: str = "",
    in_chans: int = 1,
    dp_safe: bool = False,
    pretrained_path: str | os.PathLike[str] | None = None,
    drop_rate: float = 0.0,
    channels: tuple[int, ...] | list[int] = (16, 32, 64, 128, 256),
    dilated_decoder_levels: int | None = None,
    norm: str = "instance",
) -> nn.Module:
    """RUSP-Net for 2D CT slices (see :class:`RUSPNet`).

    Args:
        num_classes: mask classes including the background (2 for tumour / background).
        backbone: ignored (RUSP-Net is its own encoder); accepted for the common signature.
        in_chans: input channels. Default 1.
        dp_safe: build for Opacus (``norm="batch"`` becomes GroupNorm). Default False.
        pretrained_path: whole-model state_dict of the same configuration. Default None.
        drop_rate: dropout in the bottleneck pyramid. Default 0.0.
        channels: encoder widths per level. Default (16, 32, 64, 128, 256).
        dilated_decoder_levels: last decoder levels with dilation 2. Default None: 2, or
            every level when there are fewer.
        norm: "instance" (default), "batch" or "group".
    """
    problems = _common_problems(num_classes, in_chans, channels, drop_rate, norm, seg=True)
    levels = len(channels) - 1 if isinstance(channels, tuple | list) else 0
    if dilated_decoder_levels is None:
        dilated_decoder_levels = min(2, levels)
    if not isinstance(dilated_decoder_levels, int) or not 0 <= dilated_decoder_levels <= levels:
        problems.append(
            f"dilated_decoder_levels must be an integer in [0, {levels}], "
            f"got {dilated_decoder_levels!r}"
        )
    if problems:
        raise ModelConfigError("cannot build rusp_net: " + "; ".join(problems))
    model = RUSPNet(
        num_classes=num_classes,
        in_chans=in_chans,
        channels=tuple(channels),
        dilated_decoder_levels=dilated_decoder_levels,
        norm=norm,
        dp_safe=dp_safe,
        drop_rate=drop_rate,
    )
    _load_whole_model(model, pretrained_path)
    return model


@register_model(kind="segmentation-risk")
def dfs(
    *,
    num_classes: int,
    in_features: int = 25,
    backbone: str = "",
    in_chans: int = 1,
    dp_safe: bool = False,
    pretrained_path: str | os.PathLike[str] | None = None,
    drop_rate: float = 0.0,
    seg_classes: int = 2,
    channels: tuple[int, ...] | list[int] = (16, 32, 64, 128, 256),
    hidden_size: int = 32,
    fusion_hidden: int = 32,
    fuse_bottleneck: bool = False,
    norm: str = "instance",
) -> nn.Module:
    """The DFS model: RUSP-Net + clinical GRU + fusion into a risk (see :class:`DFSNet`).

    Args:
        num_classes: risk classes (2: one sigmoid output).
        in_features: clinical input width (set from the task). Default 25, as in the study.
        backbone: ignored; accepted for the common signature.
        in_chans: CT channels. Default 1.
        dp_safe: Opacus' DPGRU (and GroupNorm for ``norm="batch"``). Default False.
        pretrained_path: whole-model state_dict of the same configuration. Default None.
        drop_rate: dropout on the GRU state and in the fusion head. Default 0.0.
        seg_classes: mask classes including the background. Default 2.
        channels: RUSP-Net widths. Default (16, 32, 64, 128, 256).
        hidden_size: GRU units. Default 32.
        fusion_hidden: fusion layer width. Default 32.
        fuse_bottleneck: also fuse the pooled bottleneck features. Default False.
        norm: RUSP-Net normalisation, "instance" (default), "batch" or "group".
    """
    problems = _common_problems(num_classes, in_chans, channels, drop_rate, norm, seg=False)
    problems += [
        f"{name} must be an integer >= {low}, got {value!r}"
        for name, value, low in (
            ("in_features", in_features, 1),
            ("seg_classes", seg_classes, 2),
            ("hidden_size", hidden_size, 1),
            ("fusion_hidden", fusion_hidden, 1),
        )
        if isinstance(value, bool) or not isinstance(value, int) or value < low
    ]
    if problems:
        raise ModelConfigError("cannot build dfs: " + "; ".join(problems))
    model = DFSNet(
        num_classes=num_classes,
        in_features=in_features,
        in_chans=in_chans,
        seg_classes=seg_classes,
        channels=tuple(channels),
        hidden_size=hidden_size,
        fusion_hidden=fusion_hidden,
        fuse_bottleneck=bool(fuse_bottleneck),
        norm=norm,
        dp_safe=dp_safe,
        drop_rate=drop_rate,
    )
    _load_whole_model(model, pretrained_path)
    return model
