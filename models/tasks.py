"""Task presets: which model, modalities, classes and input size a study uses.

A task is the contract between a site's manifest and the model: the manifest must have one
column per modality, and labels must be one of ``classes`` (or their integer index).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from models._options import look_up_option

__all__ = [
    "TaskSpec",
    "TaskDefinitionError",
    "register_task",
    "get_task",
    "list_tasks",
    "load_task_file",
    "resolve_task",
]


class TaskDefinitionError(ValueError):
    """A task definition (``task.json``, ``--task-json``) that cannot be read or is invalid."""


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
        features: clinical feature columns (none for image-only tasks), in the order the
            model takes them.
        description: one line for listings.
        model_kwargs: model-specific builder options (see ``models.factory``).
        categories: feature name -> its category levels, for the features that hold category
            strings (matched case-insensitively, surrounding whitespace ignored); every other
            feature is numeric. A feature with 2 levels becomes one 0/1 input (1 = the second
            level), one with more levels a one-hot block (see ``models.clinical``). Levels are
            declared, not learned, so every site builds the same input width.
        bags: the modalities that hold a bag of images per row (a folder or ``;``-separated
            paths in the manifest cell, e.g. the electron-microscopy fields of one biopsy); the
            dataset gives them as ``(N, C, S, S)`` per row and the loader pads them to
            ``(B, N_max, C, S, S)`` followed by a ``(B, N_max)`` bool mask. Every other
            modality takes exactly one image per row.
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
    categories: dict[str, tuple[str, ...]] = field(default_factory=dict, hash=False)
    bags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        problems = [
            f"bags names {name!r}, which is not one of the modalities"
            for name in self.bags
            if name not in self.modalities
        ]
        levels: dict[str, tuple[str, ...]] = {}
        for name, values in dict(self.categories).items():
            if name not in self.features:
                problems.append(f"categories names {name!r}, which is not one of the features")
                continue
            if isinstance(values, str) or not all(isinstance(v, str) for v in values):
                problems.append(
                    f"categories[{name!r}] must be a list of level names, got {values!r}"
                )
                continue
            cleaned = tuple(v.strip() for v in values)
            distinct = len({v.lower() for v in cleaned})
            if len(cleaned) < 2 or "" in cleaned or distinct < len(cleaned):
                problems.append(
                    f"categories[{name!r}] must hold >= 2 distinct non-empty levels, got {values!r}"
                )
            levels[name] = cleaned
        if problems:
            raise ValueError(f"task {self.name!r}: " + "; ".join(problems))
        object.__setattr__(self, "categories", levels)
        object.__setattr__(self, "bags", tuple(self.bags))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def replace(self, **changes: object) -> TaskSpec:
        """A copy with some fields changed; empty/zero values leave a field as it is."""
        kept = {k: v for k, v in changes.items() if v not in (None, "", 0, ())}
        return dataclasses.replace(self, **kept)  # type: ignore[arg-type]

    def with_model_options(self, text: str) -> TaskSpec:
        """A copy whose ``model_kwargs`` are updated from ``"key=value key=value"`` (the run
        config's ``model-options``, e.g. ``"top_k=2 loss_weights=0.5,0.5,0.5,1"``); values that
        read as int, float or true/false become one, the rest stay strings.

        Raises:
            ValueError: an item is not ``key=value``.
        """
        options = dict(self.model_kwargs)
        problems = []
        for item in text.split():
            key, sep, value = item.partition("=")
            if not sep or not key or not value:
                problems.append(f"expected key=value, got {item!r}")
                continue
            options[key] = _option_value(value)
        if problems:
            raise ValueError(f"model-options {text!r}: " + "; ".join(problems))
        return dataclasses.replace(self, model_kwargs=options) if text.strip() else self

    def to_dict(self) -> dict[str, object]:
        out = dataclasses.asdict(self)
        for key in ("modalities", "classes", "features", "bags"):
            out[key] = list(out[key])
        out["categories"] = {k: list(v) for k, v in self.categories.items()}
        return out

    def to_json(self) -> str:
        """The definition as one line of JSON (what ``task.json`` and ``task-json`` hold)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: object, *, source: str = "task definition") -> TaskSpec:
        """Build a task from :meth:`to_dict` output (e.g. a ``task.json`` file).

        Args:
            data: a mapping with the fields of :class:`TaskSpec`; ``name``, ``model`` and
                ``classes`` are required, the others default as in the dataclass.
            source: where the data came from, for error messages.

        Raises:
            TaskDefinitionError: listing every problem (unknown or missing keys, wrong types).
        """
        if not isinstance(data, dict):
            raise TaskDefinitionError(
                f"{source}: expected a JSON object, got {type(data).__name__}"
            )
        known = {f.name: f for f in dataclasses.fields(cls)}
        problems = [f"unknown key {key!r}" for key in sorted(set(data) - set(known))]
        problems += [
            f"missing key {key!r}" for key in ("name", "model", "classes") if key not in data
        ]
        values: dict[str, object] = {}
        for key, value in data.items():
            if key not in known:
                continue
            kind = str(known[key].type)
            if kind.startswith("tuple"):
                if not isinstance(value, list | tuple) or not all(
                    isinstance(v, str) and v for v in value
                ):
                    problems.append(f"{key!r} must be a list of non-empty strings, got {value!r}")
                    continue
                value = tuple(value)
            elif kind == "int":
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    problems.append(f"{key!r} must be an integer >= 0, got {value!r}")
                    continue
            elif kind.startswith("dict"):
                if not isinstance(value, dict):
                    problems.append(f"{key!r} must be an object, got {value!r}")
                    continue
                value = dict(value)
            elif not isinstance(value, str):
                problems.append(f"{key!r} must be a string, got {value!r}")
                continue
            values[key] = value
        if "classes" in values and len(values["classes"]) < 2:  # type: ignore[arg-type]
            problems.append(f"'classes' needs at least 2 classes, got {data['classes']!r}")
        if problems:
            raise TaskDefinitionError(f"{source}: " + "; ".join(problems))
        values.setdefault("modalities", ())
        values.setdefault("image_size", 0)
        values.setdefault("backbone", "")
        try:
            return cls(**values)  # type: ignore[arg-type]
        except ValueError as err:
            raise TaskDefinitionError(f"{source}: {err}") from err

    @classmethod
    def from_json(cls, text: str, *, source: str = "task-json") -> TaskSpec:
        """Build a task from :meth:`to_json` text (see :meth:`from_dict`)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise TaskDefinitionError(f"{source}: not valid JSON: {err}") from err
        return cls.from_dict(data, source=source)


def _option_value(text: str) -> object:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


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


def load_task_file(path: str | os.PathLike[str]) -> TaskSpec:
    """Read an ad-hoc task definition written by ``fedfusion simulate`` (``task.json``).

    Raises:
        TaskDefinitionError: the file is missing, not JSON, or not a valid task.
    """
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as err:
        raise TaskDefinitionError(f"cannot read task definition {str(file)!r}: {err}") from err
    return TaskSpec.from_json(text, source=str(file))


def resolve_task(
    name: str | None = None, task_json: str | os.PathLike[str] | None = None
) -> TaskSpec:
    """The task a command works on: a preset ``name`` or a ``task.json`` file (not both).

    Raises:
        TaskDefinitionError: both or neither given, or the file is invalid.
        UnknownOptionError: an unknown preset name (with "did you mean").
    """
    if task_json and name:
        raise TaskDefinitionError(
            "give a task preset (--task) or a task file (--task-json), not both"
        )
    if task_json:
        return load_task_file(task_json)
    if not name:
        raise TaskDefinitionError("no task: give a preset with --task or a file with --task-json")
    return get_task(name)


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
# The study's single-modality baselines: the same grades from B-mode or CEUS alone.
for _modality in ("bmode", "ceus"):
    register_task(
        TaskSpec(
            name=f"rcc-grading-{_modality}",
            model="single_modality",
            modalities=(_modality,),
            classes=("low", "high"),
            image_size=300,
            backbone="efficientnet_b3",
            description=f"RCC WHO/ISUP grade from {_modality} alone (single-modality baseline)",
        )
    )

# Cervical lymph nodes, three hospitals: 2D grey-scale, colour Doppler (CDFI) and elastography
# ultrasound; an ImageNet-style ResNet per modality, fused (see models.resnet_fusion).
_LYMPH_NODE_MODALITIES = ("us2d", "cdfi", "elasto")
register_task(
    TaskSpec(
        name="lymph-node",
        model="resnet_fusion",
        modalities=_LYMPH_NODE_MODALITIES,
        classes=("metastatic", "lymphoma", "benign"),
        image_size=224,
        backbone="resnet18",
        description="cervical lymph node: metastatic / lymphoma / benign from 2D + CDFI + "
        "elastography ultrasound (a ResNet per modality, fused)",
    )
)
# The study's single-modality comparison: the same classes from one modality at a time.
for _modality in _LYMPH_NODE_MODALITIES:
    register_task(
        TaskSpec(
            name=f"lymph-node-{_modality}",
            model="single_modality",
            modalities=(_modality,),
            classes=("metastatic", "lymphoma", "benign"),
            image_size=224,
            backbone="resnet18",
            description=f"cervical lymph node from {_modality} alone (single-modality ResNet)",
        )
    )
del _modality

# Chronic kidney disease risk from the clinical record (the DFS study's clinical branch; UCI
# CKD columns). Binary categories are coded 0/1 with the second level as 1.
_CKD_FEATURES = (
    "age", "bp", "sg", "al", "su", "rbc", "pc", "pcc", "ba", "bgr", "bu", "sc",
    "sod", "pot", "hemo", "pcv", "wc", "rc", "htn", "dm", "cad", "appet", "pe", "ane",
)  # fmt: skip
_CKD_CATEGORIES = {
    "rbc": ("normal", "abnormal"),
    "pc": ("normal", "abnormal"),
    "pcc": ("notpresent", "present"),
    "ba": ("notpresent", "present"),
    "htn": ("no", "yes"),
    "dm": ("no", "yes"),
    "cad": ("no", "yes"),
    "appet": ("good", "poor"),
    "pe": ("no", "yes"),
    "ane": ("no", "yes"),
}
for _suffix, _model, _kwargs, _what in (
    ("", "clinical_gru", {"drop_rate": 0.2}, "the DFS study's GRU (3,393 parameters)"),
    ("-logreg", "clinical_logreg", {}, "logistic regression"),
    ("-mlp", "clinical_mlp", {"drop_rate": 0.2}, "a small MLP"),
):
    register_task(
        TaskSpec(
            name=f"ckd-risk{_suffix}",
            model=_model,
            modalities=(),
            classes=("notckd", "ckd"),
            image_size=0,
            backbone="",
            features=_CKD_FEATURES,
            categories=_CKD_CATEGORIES,
            model_kwargs=_kwargs,
            description=f"chronic kidney disease (ckd / notckd) from 24 clinical features, {_what}",
        )
    )
del _suffix, _model, _kwargs, _what

# Kidney tumour on 2D CT slices (the DFS study): RUSP-Net segments the tumour; the DFS model
# also reads the clinical record with the study's GRU and fuses both into a CKD risk. The
# manifest's ``mask`` column holds each slice's label map (0 background, 1 tumour).
register_task(
    TaskSpec(
        name="kidney-tumour-dfs",
        model="dfs",
        modalities=("ct",),
        classes=("notckd", "ckd"),
        image_size=256,
        backbone="",
        in_chans=1,
        features=_CKD_FEATURES,
        categories=_CKD_CATEGORIES,
        model_kwargs={"drop_rate": 0.2},
        description="kidney tumour mask (RUSP-Net) + CKD risk from CT slice and 24 clinical "
        "features (GRU), fused (DFS)",
    )
)
register_task(
    TaskSpec(
        name="kidney-tumour-seg",
        model="rusp_net",
        modalities=("ct",),
        classes=("background", "tumour"),
        image_size=256,
        backbone="",
        in_chans=1,
        description="kidney tumour segmentation of 2D CT slices (RUSP-Net); label = whether "
        "the slice shows tumour",
    )
)
# Glomerular disease (CMUS-Net): a bag of transmission electron microscopy fields, one light
# microscopy (OM) and one immunofluorescence (IM) image per biopsy (see models.cmusnet).
register_task(
    TaskSpec(
        name="glomerular-disease",
        model="cmusnet",
        modalities=("tem", "om", "im"),
        bags=("tem",),
        classes=("IgAN", "MN", "LN"),
        image_size=224,
        backbone="resnet10t",
        model_kwargs={"top_k": 3, "loss_weights": "0.3,0.3,0.3,1.0"},
        description="glomerular disease: IgAN / MN / LN from a TEM bag + light + "
        "immunofluorescence microscopy (CMUS-Net)",
    )
)
