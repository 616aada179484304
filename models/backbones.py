"""timm backbones: pooled feature extractors, DP-safe conversion, offline pretrained weights.

A backbone is any timm model built with ``num_classes=0``: ``backbone(x)`` maps images
``(B, C, H, W)`` to globally average-pooled features ``(B, backbone.num_features)``.

DP-safe builds (``dp_safe=True``) are converted after construction (see :func:`make_dp_safe`):
BatchNorm layers become GroupNorm (timm's ``BatchNormAct2d`` becomes ``GroupNormAct`` with its
activation kept), activations stop working in place, and timm ResNet blocks stop adding the
shortcut in place. State-dict keys stay the same as in the BatchNorm build minus the running
statistics, so the server and every site build identical keys.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
from pathlib import Path

import timm
import torch
from opacus.validators import ModuleValidator
from timm.layers import BatchNormAct2d, GroupNormAct
from timm.models import load_state_dict
from timm.models.resnet import BasicBlock, Bottleneck
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from models._options import UnknownOptionError
from models._registry import ModelConfigError, PretrainedWeightsError

__all__ = ["create_backbone", "backbone_out_features", "make_dp_safe", "dp_safety_problems"]

logger = logging.getLogger(__name__)

# Largest GroupNorm group count used by make_dp_safe (the GroupNorm paper's default).
_MAX_GROUPS = 32

# timm model modules whose DP-safe conversion is covered by tests (build, Opacus validation,
# one GradSampleModule step). Others are converted the same way but get a warning.
_DP_VERIFIED_MODULES = frozenset({"timm.models.efficientnet", "timm.models.resnet"})

# Blocks whose forward does ``x += shortcut`` right after a parameterised norm layer. Under
# Opacus' backward hooks that in-place add fails ("Output 0 of BackwardHookFunction is a view
# and is being modified inplace"); the block's parameter-free ``drop_path`` slot is given a
# copy so the add lands on a fresh tensor. Adds no state-dict keys.
_INPLACE_RESIDUAL_BLOCKS: tuple[type[nn.Module], ...] = (BasicBlock, Bottleneck)

_BN_STAT_SUFFIXES = (".running_mean", ".running_var", ".num_batches_tracked")


class _CopyOutput(nn.Module):
    """Run ``inner`` (if any) and return a copy, so later in-place ops never touch a hooked output.

    Args:
        inner: optional parameter-free module to run first (e.g. timm's ``DropPath``).
    """

    def __init__(self, inner: nn.Module | None = None) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inner is not None:
            x = self.inner(x)
        return x.clone()


def _group_count(num_channels: int, max_groups: int = _MAX_GROUPS) -> int:
    """Largest divisor of ``num_channels`` that is at most ``max_groups``."""
    return max(g for g in range(1, min(num_channels, max_groups) + 1) if num_channels % g == 0)


def _group_norm_for(bn: _BatchNorm) -> nn.Module:
    """A GroupNorm (or timm GroupNormAct) replacing ``bn``, with its affine parameters copied."""
    channels = bn.num_features
    groups = _group_count(channels)
    new: nn.Module
    if isinstance(bn, BatchNormAct2d):
        new = GroupNormAct(
            channels, num_groups=groups, eps=bn.eps, affine=bn.affine, apply_act=False
        )
        new.act = bn.act
        new.drop = bn.drop
    else:
        new = nn.GroupNorm(groups, channels, eps=bn.eps, affine=bn.affine)
    if bn.affine:
        with torch.no_grad():
            new.weight.copy_(bn.weight)
            new.bias.copy_(bn.bias)
    return new


def make_dp_safe(module: nn.Module) -> nn.Module:
    """Make ``module`` acceptable to Opacus, in place, and return it.

    * every BatchNorm (including timm's ``BatchNormAct2d``, which Opacus' own
      ``ModuleValidator.fix`` misses) becomes GroupNorm with the largest group count <= 32 that
      divides its channels; affine weights are kept;
    * every module with an ``inplace`` flag gets ``inplace=False``;
    * timm ResNet blocks get a copy before their in-place residual add.

    Args:
        module: any network; typically a timm backbone.

    Returns:
        ``module`` itself.

    Raises:
        ModelConfigError: something Opacus cannot handle is left (see :func:`dp_safety_problems`).
    """
    norms = [(name, m) for name, m in module.named_modules() if isinstance(m, _BatchNorm)]
    for name, bn in norms:
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        if not parent_name and not attr:
            raise ModelConfigError("make_dp_safe needs a network, got a bare BatchNorm layer")
        setattr(parent, attr, _group_norm_for(bn))
    for block in module.modules():
        if isinstance(block, _INPLACE_RESIDUAL_BLOCKS) and not isinstance(
            block.drop_path, _CopyOutput
        ):
            block.drop_path = _CopyOutput(block.drop_path)
    for sub in module.modules():
        if getattr(sub, "inplace", None) is True:
            sub.inplace = False
    problems = dp_safety_problems(module)
    if problems:
        raise ModelConfigError(
            f"cannot make {type(module).__name__} DP-safe: " + "; ".join(problems)
        )
    return module


def dp_safety_problems(module: nn.Module) -> list[str]:
    """Everything that stops Opacus from computing per-sample gradients of ``module``.

    Stricter than ``opacus.validators.ModuleValidator.validate``, which matches exact types and
    so accepts timm's ``BatchNormAct2d`` and ignores in-place activations.

    Args:
        module: the network to check (in training mode, as Opacus requires).

    Returns:
        One readable line per problem; empty when the module is DP-safe.
    """
    problems = [str(e) for e in ModuleValidator.validate(module, strict=False)]
    for name, sub in module.named_modules():
        where = f"{name or '<root>'} ({type(sub).__name__})"
        if isinstance(sub, _BatchNorm):
            problems.append(f"{where} mixes samples through batch statistics; use GroupNorm")
        if getattr(sub, "inplace", None) is True:
            problems.append(f"{where} works in place; Opacus' backward hooks need inplace=False")
        if isinstance(sub, _INPLACE_RESIDUAL_BLOCKS) and not isinstance(sub.drop_path, _CopyOutput):
            problems.append(f"{where} adds its shortcut in place after a hooked norm layer")
    return problems


def backbone_out_features(backbone: nn.Module) -> int:
    """Width ``D`` of the ``(B, D)`` features a ``num_classes=0`` timm backbone returns.

    Usually ``backbone.num_features``; families with a conv/MLP after pooling (MobileNetV3,
    some ConvNeXt/ViT variants) return ``head_hidden_size`` features instead.

    Raises:
        ModelConfigError: the module has neither attribute (not a timm model).
    """
    width = getattr(backbone, "head_hidden_size", None) or getattr(backbone, "num_features", None)
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ModelConfigError(
            f"{type(backbone).__name__} is not a timm backbone: it needs an integer "
            "num_features (or head_hidden_size) giving the width of its pooled features"
        )
    return width


def _unknown_backbone_error(name: str) -> UnknownOptionError:
    arch = name.split(".", 1)[0]
    close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return UnknownOptionError(
        f"unknown backbone {name!r}: not a timm model.{hint} "
        f"List candidates with timm.list_models('*{arch[:6]}*')."
    )


def _option_problems(
    name: str, in_chans: int, drop_rate: float, drop_path_rate: float
) -> list[str]:
    problems = []
    if not isinstance(name, str) or not name:
        problems.append(f"backbone must be a timm model name, got {name!r}")
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        problems.append(f"in_chans must be an integer >= 1, got {in_chans!r}")
    for key, value in (("drop_rate", drop_rate), ("drop_path_rate", drop_path_rate)):
        if not isinstance(value, int | float) or not math.isfinite(value) or not 0 <= value < 1:
            problems.append(f"{key} must be in [0, 1), got {value!r}")
    return problems


def _check_weight_keys(model: nn.Module, path: Path, *, dp_safe: bool) -> None:
    """Raise unless the file's tensors cover the backbone exactly (classifier keys aside).

    timm loads headless backbones with ``strict=False`` (the classifier is dropped), which would
    silently keep random weights for a file from another architecture; this check does not.
    """
    file_keys = set(load_state_dict(str(path)))
    classifiers = model.pretrained_cfg.get("classifier") or ()
    if isinstance(classifiers, str):
        classifiers = (classifiers,)
    for head in classifiers:
        file_keys -= {f"{head}.weight", f"{head}.bias"}
    model_keys = set(model.state_dict())

    def ignored(key: str) -> bool:
        # DP-safe builds drop BatchNorm statistics; num_batches_tracked never matters here.
        return key.endswith(".num_batches_tracked") or (dp_safe and key.endswith(_BN_STAT_SUFFIXES))

    missing = sorted(k for k in model_keys - file_keys if not ignored(k))
    unexpected = sorted(k for k in file_keys - model_keys if not ignored(k))
    if not missing and not unexpected:
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} backbone tensors missing (e.g. {', '.join(missing[:4])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unknown tensors (e.g. {', '.join(unexpected[:4])})")
    if missing and all(k.endswith(_BN_STAT_SUFFIXES) for k in missing) and not unexpected:
        hint = (
            " The file has no BatchNorm statistics: it was saved from a DP-safe build, so load "
            "it with dp_safe=True."
        )
    elif any(k.startswith("backbone.") for k in unexpected):
        hint = (
            " It looks like a whole fedfusion model's state_dict; save "
            "model.backbone.state_dict() for use as pretrained_path."
        )
    else:
        hint = " Is it a state_dict of the same timm architecture?"
    raise PretrainedWeightsError(
        f"pretrained weights file {str(path)!r} does not fit backbone "
        f"{model.pretrained_cfg.get('architecture')!r}: {'; '.join(parts)}.{hint}"
    )


def create_backbone(
    name: str,
    *,
    in_chans: int = 3,
    dp_safe: bool = False,
    pretrained_path: str | os.PathLike[str] | None = None,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
) -> nn.Module:
    """Build a timm model as a pooled feature extractor.

    Args:
        name: any timm model name, optionally with a pretrained tag
            (``"efficientnet_b3"``, ``"resnet18.a1_in1k"``).
        in_chans: input channels ``C`` of ``(B, C, H, W)`` images. Default 3.
        dp_safe: convert for Opacus (GroupNorm, no in-place ops; see :func:`make_dp_safe`).
            Default False.
        pretrained_path: local timm/torch state_dict (``.pth``, ``.pt``, ``.bin``,
            ``.safetensors``) to initialise from; nothing is ever downloaded. The first conv is
            adapted when ``in_chans`` differs from the file's; classifier tensors are ignored.
            Default None (random init); ``""`` (the run config's "unset") means the same.
        drop_rate: dropout on the pooled features (timm's ``drop_rate``). Default 0.0.
        drop_path_rate: stochastic depth rate, for families that have it. Default 0.0.

    Returns:
        The timm model with ``num_classes=0``: ``forward`` maps ``(B, C, H, W)`` to
        ``(B, D)`` via global average pooling, where ``D = backbone_out_features(model)``
        (``model.num_features`` for EfficientNet and ResNet).

    Raises:
        UnknownOptionError: ``name`` is not a timm model (the message lists close names).
        PretrainedWeightsError: the weights file is missing or does not fit.
        ModelConfigError: other bad options, or a family that cannot be made DP-safe.
    """
    problems = _option_problems(name, in_chans, drop_rate, drop_path_rate)
    if problems:
        raise ModelConfigError(f"cannot build backbone {name!r}: " + "; ".join(problems))
    if not timm.is_model(name):
        raise _unknown_backbone_error(name)
    path = Path(pretrained_path) if pretrained_path not in (None, "") else None
    if path is not None and not path.is_file():
        raise PretrainedWeightsError(
            f"pretrained weights file {str(path)!r} not found; sites are offline, so copy a timm "
            "state_dict (.pth or .safetensors) there first, or pass pretrained_path=None"
        )

    kwargs: dict[str, object] = {"num_classes": 0, "in_chans": in_chans, "drop_rate": drop_rate}
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    if path is not None:
        # A local file outranks every other source in timm's pretrained_cfg; clearing the
        # remote sources as well makes sure nothing can fall back to a download.
        kwargs["pretrained"] = True
        kwargs["pretrained_cfg_overlay"] = {
            "file": str(path),
            "source": None,
            "url": None,
            "hf_hub_id": None,
        }
    try:
        model = timm.create_model(name, **kwargs)
    except TypeError as err:
        raise ModelConfigError(
            f"timm backbone {name!r} rejected the options {kwargs}: {err}"
        ) from err
    except (RuntimeError, OSError, KeyError, ValueError) as err:
        if path is None:
            raise
        raise PretrainedWeightsError(
            f"could not load pretrained weights file {str(path)!r} into backbone {name!r}: {err}"
        ) from err
    if path is not None:
        _check_weight_keys(model, path, dp_safe=dp_safe)
        logger.info("backbone %s: loaded weights from %s", name, path)

    if dp_safe:
        if type(model).__module__ not in _DP_VERIFIED_MODULES:
            logger.warning(
                "dp_safe for backbone %r (%s) is not covered by fedfusion's tests; run one "
                "Opacus step on a small batch before starting a federated run",
                name,
                type(model).__module__,
            )
        make_dp_safe(model)
    return model


def norm_state_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the normalisation layers (BatchNorm/GroupNorm/LayerNorm and timm's
    norm+act variants): what FedBN keeps local."""
    keys: set[str] = set()
    norm_types = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    for name, module in model.named_modules():
        if isinstance(module, norm_types):
            prefix = f"{name}." if name else ""
            keys.update(prefix + k for k in module.state_dict(keep_vars=True))
    return keys
