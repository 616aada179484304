"""Build the model a task asks for: TaskSpec -> ``create_model`` options."""

from __future__ import annotations

import inspect
import logging
import os

from torch import nn

from models._registry import ModelConfigError, create_model, model_entrypoint, model_kind
from models.clinical import clinical_input_width
from models.tasks import TaskSpec

__all__ = ["create_model_for_task", "model_kwargs_for_task", "task_kind"]

logger = logging.getLogger(__name__)

# Options that come from the task's own fields (or from the caller); a task's model_kwargs
# may not set them, so there is one place to read each of them.
_TASK_OWNED_OPTIONS = frozenset(
    {
        "num_classes",
        "backbone",
        "in_chans",
        "num_modalities",
        "in_features",
        "dp_safe",
        "pretrained_path",
    }
)


def task_kind(task: TaskSpec) -> str:
    """The kind of the task's model (``models._registry.MODEL_KINDS``): ``"classification"``,
    ``"segmentation"`` (a ``mask`` column is the target) or ``"segmentation-risk"`` (``mask``
    and ``label``)."""
    return model_kind(task.model)


def model_kwargs_for_task(
    task: TaskSpec,
    *,
    dp_safe: bool = False,
    pretrained_path: str | os.PathLike[str] | None = None,
) -> dict[str, object]:
    """The ``create_model(task.model, **kwargs)`` options for ``task``.

    ``num_classes``, ``backbone`` and ``in_chans`` come from the task; ``num_modalities`` is
    ``len(task.modalities)`` for fusion models (those whose builder takes ``num_modalities``);
    ``in_features`` is the clinical input width (``models.clinical.clinical_input_width``) for
    models that take clinical features (those whose builder takes ``in_features``);
    ``task.model_kwargs`` adds model-specific options (e.g. ``{"attn_reduction": 8}``).
    ``task.image_size`` is not a model option: backbones pool globally, any size works.

    Args:
        task: the task preset or ad-hoc task.
        dp_safe: build for Opacus. Default False.
        pretrained_path: local backbone weights file. Default None.

    Raises:
        ModelConfigError: model_kwargs sets a task-owned option, or a single-modality model is
            asked to take several modalities.
    """
    params = inspect.signature(model_entrypoint(task.model)).parameters
    problems = []
    owned = sorted(_TASK_OWNED_OPTIONS & set(task.model_kwargs))
    if owned:
        problems.append(
            f"model_kwargs must not set {', '.join(owned)}: these come from the task's fields "
            "(classes, backbone, in_chans, modalities) or the caller (dp_safe, pretrained_path)"
        )
    kwargs: dict[str, object] = {
        "num_classes": task.num_classes,
        "backbone": task.backbone,
        "in_chans": task.in_chans,
        "dp_safe": dp_safe,
        "pretrained_path": pretrained_path,
    }
    takes_features = "in_features" in params
    if takes_features:
        kwargs["in_features"] = clinical_input_width(task)
        if not task.features:
            problems.append(f"model {task.model!r} takes clinical features but the task has none")
    elif task.features:
        problems.append(
            f"model {task.model!r} takes no clinical features but the task lists "
            f"{', '.join(task.features)}; use a clinical model (clinical_logreg, clinical_mlp, "
            "clinical_gru) or drop the features"
        )
    if "num_modalities" in params:
        kwargs["num_modalities"] = len(task.modalities)
    elif takes_features and model_kind(task.model) == "classification":
        if task.modalities:
            problems.append(
                f"model {task.model!r} takes no image but the task has modalities "
                f"{', '.join(task.modalities)}"
            )
    elif len(task.modalities) != 1:
        problems.append(
            f"model {task.model!r} takes one image modality but the task has "
            f"{len(task.modalities)} ({', '.join(task.modalities)}); narrow it, e.g. "
            f"task.replace(modalities=({task.modalities[0]!r},))"
            if task.modalities
            else f"model {task.model!r} takes one image modality but the task has none"
        )
    if problems:
        raise ModelConfigError(f"task {task.name!r}: " + "; ".join(problems))
    kwargs.update(task.model_kwargs)
    return kwargs


def create_model_for_task(
    task: TaskSpec,
    *,
    dp_safe: bool = False,
    pretrained_path: str | os.PathLike[str] | None = None,
) -> nn.Module:
    """Build ``task.model`` for ``task`` (see :func:`model_kwargs_for_task` for the mapping).

    Args:
        task: e.g. ``get_task("rcc-grading")``.
        dp_safe: build for Opacus (GroupNorm, no in-place ops). Default False.
        pretrained_path: local backbone weights file; never downloads. Default None.

    Returns:
        The model; ``forward`` takes one ``(B, in_chans, H, W)`` tensor per task modality, in
        ``task.modalities`` order, and returns logits ``(B, task.num_classes)``.
    """
    kwargs = model_kwargs_for_task(task, dp_safe=dp_safe, pretrained_path=pretrained_path)
    logger.info("task %s: building %s with backbone %s", task.name, task.model, task.backbone)
    return create_model(task.model, **kwargs)
