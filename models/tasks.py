"""Task presets: which model, modalities, classes and input size a study uses.

A task is the contract between a site's manifest and the model: the manifest must have one
column per modality, and labels must be one of ``classes`` (or their integer index).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from models._options import look_up_option

__all__ = ["TaskSpec", "register_task", "get_task", "list_tasks"]


@dataclass(frozen=True)
class TaskSpec:
    """One learning task.

    Args:
        name: preset name, e.g. ``"rcc-grading"``.
        model: model registry name (see ``models.list_models()``).
        modalities: manifest columns holding image paths, in the order the model takes them.
        classes: class names; index 1 is the positive class of a binary task.
        image_size: square input side in pixels.
        backbone: timm backbone name.
        in_chans: channels fed to the backbone (grey images are repeated to fit).
        features: clinical feature columns (none for image-only tasks).
        description: one line for listings.
    """

    name: str
    model: str
    modalities: tuple[str, ...]
    classes: tuple[str, ...]
    image_size: int
    backbone: str
    in_chans: int = 3
    features: tuple[str, ...] = ()
    description: str = ""
    model_kwargs: dict[str, object] = field(default_factory=dict, hash=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def replace(self, **changes: object) -> TaskSpec:
        """A copy with some fields changed; empty/zero values leave a field as it is."""
        kept = {k: v for k, v in changes.items() if v not in (None, "", 0, ())}
        return dataclasses.replace(self, **kept)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, object]:
        out = dataclasses.asdict(self)
        for key in ("modalities", "classes", "features"):
            out[key] = list(out[key])
        return out


_TASKS: dict[str, TaskSpec] = {}


def register_task(task: TaskSpec) -> TaskSpec:
    if task.name in _TASKS:
        raise ValueError(f"task {task.name!r} is already registered")
    _TASKS[task.name] = task
    return task


def get_task(name: str) -> TaskSpec:
    """The preset called ``name`` (raises with "did you mean" for unknown names)."""
    return _TASKS[look_up_option("task", name, _TASKS)]


def list_tasks() -> list[str]:
    return sorted(_TASKS)


register_task(
    TaskSpec(
        name="rcc-grading",
        model="mufnet",
        modalities=("bmode", "ceus"),
        classes=("low", "high"),
        image_size=300,
        backbone="efficientnet_b3",
        description="RCC WHO/ISUP grade (low G1-G2 vs high G3-G4) from B-mode + CEUS (MUF-Net)",
    )
)
