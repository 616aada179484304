"""Model registry: ``register_model``, ``create_model``, ``list_models``, ``is_model``.

After ``timm.models._registry`` / ``_factory``: every model is a builder function decorated with
:func:`register_model`; :func:`create_model` looks the name up (unknown names get "did you
mean ...?") and calls the builder with keyword arguments.

Builder contract (every registered model):

* keyword-only arguments ``num_classes: int``, ``backbone: str``, ``in_chans: int = 3``,
  ``dp_safe: bool = False``, ``pretrained_path: str | None = None``, ``drop_rate: float = 0.0``,
  plus ``num_modalities: int`` where the model fuses several modalities, plus model-specific
  options;
* the returned ``nn.Module`` follows timm's interface: attributes ``num_classes``,
  ``num_features`` and ``num_modalities``; ``forward(*xs)`` takes one ``(B, C, H, W)`` tensor per
  modality and returns logits ``(B, num_classes)``; ``forward_features(*xs)`` returns
  ``(B, num_features)``; ``forward_head(x, pre_logits=False)``; ``reset_classifier(num_classes)``;
* a model registered with ``handles_missing_modalities=True`` also accepts a ``(B, M)``
  modality mask after its ``M`` images (``forward(*xs, mask)``; 1 = present, 0 = missing).

Each model has a *kind* (``register_model(kind=...)``, default ``"classification"``) that tells the
training and evaluation path what the model returns and which targets a batch carries
(:data:`MODEL_KINDS`):

* ``"classification"``: logits ``(B, num_classes)``; target: class index ``(B,)``;
* ``"segmentation"``: mask logits ``(B, num_classes, H, W)``; target: label map ``(B, 1, H, W)``;
* ``"segmentation-risk"``: a tuple ``(mask logits (B, K_seg, H, W), risk logits (B, 2))``;
  targets: label map ``(B, 1, H, W)`` then risk class ``(B,)``.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
from collections.abc import Callable
from typing import Any

from torch import nn

from models._options import look_up_option

__all__ = [
    "ModelConfigError",
    "PretrainedWeightsError",
    "register_model",
    "create_model",
    "list_models",
    "is_model",
    "model_entrypoint",
    "handles_missing_modalities",
    "model_kind",
    "kind_of",
    "MODEL_KINDS",
]

logger = logging.getLogger(__name__)

ModelBuilder = Callable[..., nn.Module]

_MODELS: dict[str, ModelBuilder] = {}
_MISSING_OK: set[str] = set()  # models registered with handles_missing_modalities=True
_KINDS: dict[str, str] = {}

#: model kind -> number of target tensors at the end of each batch (see the module docstring).
MODEL_KINDS: dict[str, int] = {
    "classification": 1,
    "segmentation": 1,
    "segmentation-risk": 2,
}

# Modules whose import registers the built-in models. Imported on first lookup so that
# ``from models._registry import create_model`` works without importing them by hand.
_BUILTIN_MODEL_MODULES: tuple[str, ...] = (
    "models.mufnet",
    "models.resnet_fusion",
    "models.clinical",
    "models.cmusnet",
    "models.image_classifier",
    "models.rusp_net",
)
_builtins_loaded = False


class ModelConfigError(ValueError):
    """A model or backbone option that cannot be honoured (bad value or combination)."""


class PretrainedWeightsError(ModelConfigError):
    """A pretrained weights file that is missing, unreadable or does not fit the backbone."""


def register_model(
    fn: ModelBuilder | None = None,
    *,
    handles_missing_modalities: bool = False,
    kind: str = "classification",
) -> Any:
    """Decorator: register ``fn`` as a model builder under ``fn.__name__``.

    Use it bare (``@register_model``) or with flags
    (``@register_model(handles_missing_modalities=True)``).

    Args:
        fn: builder taking keyword-only options (see the module docstring) and returning an
            ``nn.Module``.
        handles_missing_modalities: the model accepts a modality mask ``(B, M)`` (1 = present)
            as an extra input after its ``M`` images and leaves a missing modality out of the
            fusion; rows with an empty modality cell are then allowed (see
            :func:`handles_missing_modalities`). Default False: such rows are refused when the
            manifest is checked.
        kind: what the model predicts, one of :data:`MODEL_KINDS`. Default "classification".

    Returns:
        ``fn`` unchanged, so the builder can still be called directly.

    Raises:
        ValueError: another builder is already registered under the same name.
        UnknownOptionError: ``kind`` is not a known kind.
    """
    look_up_option("model kind", kind, MODEL_KINDS)
    if fn is None:
        return lambda f: register_model(
            f, handles_missing_modalities=handles_missing_modalities, kind=kind
        )
    name = fn.__name__
    existing = _MODELS.get(name)
    if existing is not None and (existing.__module__, existing.__qualname__) != (
        fn.__module__,
        fn.__qualname__,
    ):
        raise ValueError(
            f"model {name!r} is already registered by {existing.__module__}; "
            "pick another builder name"
        )
    _MODELS[name] = fn
    _KINDS[name] = kind
    if handles_missing_modalities:
        _MISSING_OK.add(name)
    else:
        _MISSING_OK.discard(name)
    return fn


def _load_builtin_models() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    try:
        for module in _BUILTIN_MODEL_MODULES:
            importlib.import_module(module)
    except Exception:
        _builtins_loaded = False
        raise


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    _load_builtin_models()
    return sorted(_MODELS)


def _canonical(name: str) -> str:
    """``name``, or its underscore spelling when only that is registered (``clinical-gru``)."""
    if name not in _MODELS and isinstance(name, str) and name.replace("-", "_") in _MODELS:
        return name.replace("-", "_")
    return name


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered model (``-`` may stand for ``_``)."""
    _load_builtin_models()
    return _canonical(name) in _MODELS


def model_entrypoint(name: str) -> ModelBuilder:
    """The builder registered as ``name`` (raises with "did you mean" for unknown names).

    Registry names are the builders' function names; ``-`` may stand for ``_``
    (``"clinical-gru"`` finds ``clinical_gru``).
    """
    _load_builtin_models()
    return _MODELS[look_up_option("model", _canonical(name), _MODELS)]


def model_kind(name: str) -> str:
    """The kind of the registered model ``name`` (a key of :data:`MODEL_KINDS`)."""
    return _KINDS[model_entrypoint(name).__name__]


def kind_of(model: nn.Module) -> str:
    """The kind of a built model (its ``kind`` attribute; Opacus wrappers are looked through)."""
    inner = getattr(model, "_module", model)  # opacus.GradSampleModule keeps the model there
    return str(getattr(inner, "kind", "classification"))


def handles_missing_modalities(name: str) -> bool:
    """Whether model ``name`` takes rows with a missing modality (an empty manifest cell).

    Such a model accepts a ``(B, M)`` modality mask (1 = present, 0 = missing) after its ``M``
    image tensors and masks the missing branch out of its fusion; the dataset then adds the
    mask to every item. Other models refuse such rows when the manifest is checked.

    Raises:
        UnknownOptionError: ``name`` is not registered (with "did you mean").
    """
    return model_entrypoint(name).__name__ in _MISSING_OK


def _option_problems(name: str, builder: ModelBuilder, kwargs: dict[str, Any]) -> list[str]:
    params = inspect.signature(builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return []
    accepted = [
        p for p, spec in params.items() if spec.kind is not inspect.Parameter.VAR_POSITIONAL
    ]
    problems = []
    for key in sorted(set(kwargs) - set(accepted)):
        close = difflib.get_close_matches(key, accepted, n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        problems.append(f"unknown option {key!r}{hint}")
    required = [
        p
        for p, spec in params.items()
        if spec.default is inspect.Parameter.empty
        and spec.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    problems += [f"missing required option {p!r}" for p in required if p not in kwargs]
    if problems:
        problems.append(f"options of {name!r}: {', '.join(accepted)}")
    return problems


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``.

    Args:
        name: registry name, e.g. ``"mufnet"`` (see :func:`list_models`).
        **kwargs: the builder's keyword-only options, e.g. ``num_classes=2,
            backbone="efficientnet_b3"``.

    Returns:
        The model, in training mode.

    Raises:
        UnknownOptionError: ``name`` is not registered (the message suggests close names).
        ModelConfigError: unknown or missing options (all listed at once), or bad values.
    """
    builder = model_entrypoint(name)
    problems = _option_problems(name, builder, kwargs)
    if problems:
        raise ModelConfigError(f"cannot build model {name!r}: " + "; ".join(problems))
    logger.debug("building model %s with %s", name, kwargs)
    return builder(**kwargs)
