"""Site-local Grad-CAM: heat maps of where a model looks, on the site's own images.

Grad-CAM (MONAI's :class:`monai.visualize.GradCAM`) weights the feature maps of a backbone's
last stage by the gradient of the explained class score and keeps the positive part. For a
fusion model each modality gets its own map: the model runs on all modalities of the sample
and the map is taken from the branch that saw that modality (a shared backbone runs once on
the modalities stacked along the batch, and the map of modality ``m`` is row ``m``).

Everything here runs at the site and writes files there: images, heat maps and the index of
explained rows never leave the site (nothing in this module talks to the server).

``fedfusion site gradcam --checkpoint global_model.pt --manifest CSV --task TASK --out DIR``
writes, for each chosen row, one PNG per modality (the image with the heat map over it) and
``row<R>.png`` with the modalities side by side (images above, heat maps below), plus
``gradcam.csv`` (row, split, label, predicted class and its probability, class explained).
"""

from __future__ import annotations

import argparse
import copy
import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.visualize import GradCAM
from PIL import Image
from torch import nn

from client.dataset import modality_mask, uses_modality_mask
from client.features import site_feature_transform
from client.manifest import Manifest, ManifestError, load_manifest
from client.transforms import eval_transforms, load_image
from models import create_model_for_task
from models.tasks import resolve_task

__all__ = [
    "GradCamResult",
    "add_gradcam_command",
    "explain_rows",
    "gradcam_maps",
    "overlay",
    "run_gradcam",
]

logger = logging.getLogger(__name__)

_MIN_PNG_SIDE = 256  # small model inputs are enlarged (nearest) for viewing


@dataclass(frozen=True)
class GradCamResult:
    """Grad-CAM of one sample.

    Attributes:
        maps: ``(M, H, W)`` float32 heat maps in [0, 1], one per modality, at input resolution
            (all zeros where the class score does not depend positively on that branch).
        class_index: the class explained.
        probs: ``(K,)`` predicted class probabilities.
    """

    maps: np.ndarray
    class_index: int
    probs: np.ndarray


class _ModalityProbe(nn.Module):
    """``forward(x)`` = ``model(*inputs)`` with modality ``index`` replaced by ``x``."""

    def __init__(self, model: nn.Module, inputs: Sequence[torch.Tensor], index: int) -> None:
        super().__init__()
        self.model = model
        self.inputs = [t.detach() for t in inputs]
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = list(self.inputs)
        xs[self.index] = x
        return self.model(*xs)


def _min_max(maps: torch.Tensor) -> torch.Tensor:
    """Per-sample scaling of ``(N, 1, H, W)`` maps to [0, 1]; a constant map becomes zeros.

    (MONAI's default post-processing maps max -> 0 and min -> 1, i.e. flips the map.)
    """
    flat = maps.flatten(1)
    low = flat.min(dim=1).values.view(-1, 1, 1, 1)
    span = (flat.max(dim=1).values.view(-1, 1, 1, 1) - low).clamp_min(1e-12)
    return torch.where(span > 1e-12, (maps - low) / span, torch.zeros_like(maps))


def _last_conv(module: nn.Module) -> str:
    names = [name for name, sub in module.named_modules() if isinstance(sub, nn.Conv2d)]
    if not names:
        raise ValueError(f"{type(module).__name__} has no Conv2d layer to take Grad-CAM from")
    return names[-1]


def _target_layer(model: nn.Module, modality: int) -> tuple[str, bool]:
    """Name of the layer to explain for ``modality`` (relative to ``model``) and whether the
    backbone is shared by all modalities."""
    backbones = getattr(model, "backbones", None)
    if isinstance(backbones, nn.ModuleList):
        prefix, branch, shared = f"backbones.{modality}", backbones[modality], False
    elif isinstance(getattr(model, "backbone", None), nn.Module):
        prefix, branch, shared = "backbone", model.backbone, True
    else:
        raise ValueError(
            f"Grad-CAM needs an image model with a 'backbone' or 'backbones'; "
            f"{type(model).__name__} has neither (clinical-only models have no image to explain)"
        )
    info = getattr(branch, "feature_info", None)
    layer = None
    if info is not None:
        try:
            layer = info[-1]["module"]  # timm: the last feature stage (e.g. "layer4")
        except (IndexError, KeyError, TypeError):
            layer = None
    if not layer or layer not in dict(branch.named_modules()):
        layer = _last_conv(branch)
    return f"{prefix}.{layer}", shared


def gradcam_maps(
    model: nn.Module,
    inputs: Sequence[torch.Tensor],
    *,
    class_index: int | None = None,
) -> GradCamResult:
    """Grad-CAM heat map of every image modality of ONE sample.

    Args:
        model: a registered image model (``mufnet``, ``resnet_fusion``, ``single_modality``,
            or any model with a ``backbone`` / ``backbones`` of timm networks); left unchanged
            (a copy gets the hooks) and in its train/eval mode.
        inputs: the model's inputs for one sample: one ``(1, C, H, W)`` tensor per modality,
            then the ``(1, M)`` modality mask for models that take one, then the ``(1, F)``
            feature tensor if the task has features.
        class_index: the class to explain. Default None: the predicted class.

    Returns:
        A :class:`GradCamResult` with ``(M, H, W)`` maps.

    Raises:
        ValueError: not an image model, a batch of more than one sample, or a bad class.
    """
    m = int(getattr(model, "num_modalities", 0))
    if m < 1:
        raise ValueError(
            f"Grad-CAM needs an image model; {type(model).__name__} takes no image modality"
        )
    if len(inputs) < m or any(t.ndim != 4 or t.shape[0] != 1 for t in inputs[:m]):
        shapes = [tuple(t.shape) for t in inputs]
        raise ValueError(
            f"gradcam_maps explains one sample: pass one (1, C, H, W) tensor per modality "
            f"({m}), then the features if any; got {shapes}"
        )
    probe_model = copy.deepcopy(model).eval()  # hooks stay on the copy
    if hasattr(probe_model, "joint_batch"):
        # a shared backbone then runs once on all modalities (GroupNorm or eval-mode BatchNorm
        # give the same numbers as separate calls), so its hooks see every modality, in order
        probe_model.joint_batch = True
    with torch.no_grad():
        probs = torch.softmax(probe_model(*inputs).float(), dim=1)[0]
    k = probs.shape[0]
    if class_index is None:
        class_index = int(probs.argmax())
    elif not 0 <= class_index < k:
        raise ValueError(f"class_index must be in [0, {k - 1}], got {class_index}")
    maps = []
    for modality in range(m):
        layer, shared = _target_layer(probe_model, modality)
        probe = _ModalityProbe(probe_model, inputs, modality)
        cam = GradCAM(nn_module=probe, target_layers=f"model.{layer}", postprocessing=_min_max)
        x = inputs[modality].detach().clone().requires_grad_(True)
        heat = cam(x, class_idx=class_index)  # (1, 1, H, W), or (M, 1, H, W) when shared
        row = modality if shared and heat.shape[0] == m else 0
        maps.append(heat[row, 0].detach().cpu().numpy().astype(np.float32))
    return GradCamResult(maps=np.stack(maps), class_index=class_index, probs=probs.numpy())


def overlay(
    image: torch.Tensor | np.ndarray, heat: np.ndarray, *, alpha: float = 0.5
) -> np.ndarray:
    """The image with the heat map over it (jet colours, stronger where the map is high).

    Args:
        image: ``(C, H, W)`` in [0, 1], C = 1 or 3 (more channels: the first three).
        heat: ``(H, W)`` in [0, 1].
        alpha: opacity of the map where it is 1. Default 0.5.

    Returns:
        ``(H, W, 3)`` uint8.
    """
    pixels = np.asarray(image, dtype=np.float64)
    rgb = np.repeat(pixels[:1], 3, axis=0) if pixels.shape[0] < 3 else pixels[:3]
    rgb = np.clip(rgb.transpose(1, 2, 0), 0.0, 1.0)
    h = np.clip(np.asarray(heat, dtype=np.float64), 0.0, 1.0)[..., None]
    from matplotlib import colormaps  # imported here: the CLI loads this module at start

    colour = colormaps["jet"](h[..., 0])[..., :3]
    blended = rgb * (1.0 - alpha * h) + colour * alpha * h
    return np.round(blended * 255.0).astype(np.uint8)


def _enlarge(pixels: np.ndarray) -> Image.Image:
    image = Image.fromarray(pixels)
    factor = max(1, -(-_MIN_PNG_SIDE // max(image.size)))
    if factor > 1:
        image = image.resize((image.width * factor, image.height * factor), Image.NEAREST)
    return image


def explain_rows(
    model: nn.Module,
    manifest: Manifest,
    rows: Sequence[int],
    out_dir: str | Path,
    *,
    class_name: str | None = None,
) -> list[Path]:
    """Write Grad-CAM PNGs for some rows of the site's manifest (all files stay local).

    Args:
        model: the trained model for ``manifest.task`` (e.g. the final global weights).
        manifest: the site's checked manifest.
        rows: spreadsheet row numbers (header = 1) to explain, in any split.
        out_dir: folder to write into (created if needed).
        class_name: the class to explain; default the predicted class of each row.

    Returns:
        The PNG paths written (per row: one per present modality, then the side-by-side one).

    Raises:
        ValueError: unknown rows or class, or a model without images.
    """
    task = manifest.task
    frame = manifest.frame.set_index("row", drop=False)
    unknown = [r for r in rows if r not in frame.index]
    if unknown:
        raise ValueError(
            f"rows {unknown} are not in {manifest.path} (after the site filter); rows are "
            "spreadsheet rows, the first data row is 2"
        )
    class_index = None
    if class_name is not None:
        if class_name not in task.classes:
            raise ValueError(f"unknown class {class_name!r}; use one of {', '.join(task.classes)}")
        class_index = task.classes.index(class_name)
    prepare = eval_transforms(task.image_size, in_chans=task.in_chans)
    features = site_feature_transform(manifest) if task.features else None
    with_mask = uses_modality_mask(task)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    index_rows = []
    for row in rows:
        record = frame.loc[row]
        images = []
        for modality in task.modalities:
            path = record[modality]
            images.append(
                prepare(load_image(path))
                if path
                else torch.zeros(task.in_chans, task.image_size, task.image_size)
            )
        inputs = [image.unsqueeze(0) for image in images]
        paths = tuple(str(record[m]) for m in task.modalities)
        if with_mask and not all(paths):  # masked out of the fusion, as in training
            inputs.append(modality_mask(paths).unsqueeze(0))
        if features is not None:
            inputs.append(torch.from_numpy(features.transform(frame.loc[[row]])))
        result = gradcam_maps(model, inputs, class_index=class_index)
        panels_top, panels_bottom = [], []
        for j, modality in enumerate(task.modalities):
            plain = overlay(images[j], np.zeros_like(result.maps[j]))
            shown = overlay(images[j], result.maps[j])
            panels_top.append(plain)
            panels_bottom.append(shown)
            if not record[modality]:
                continue  # a missing modality (zero image) gets no PNG of its own
            target = out / f"row{row}_{modality}.png"
            _enlarge(shown).save(target)
            written.append(target)
        grid = np.concatenate(
            [np.concatenate(panels_top, axis=1), np.concatenate(panels_bottom, axis=1)], axis=0
        )
        side_by_side = out / f"row{row}.png"
        _enlarge(grid).save(side_by_side)
        written.append(side_by_side)
        predicted = int(result.probs.argmax())
        index_rows.append(
            {
                "row": row,
                "split": record["split"],
                "label": task.classes[int(record["label_index"])],
                "predicted": task.classes[predicted],
                "probability": f"{float(result.probs[predicted]):.4f}",
                "explained": task.classes[result.class_index],
            }
        )
        logger.info("row %d: Grad-CAM of class %s written", row, task.classes[result.class_index])
    with open(out / "gradcam.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(index_rows[0]) if index_rows else ["row"])
        writer.writeheader()
        writer.writerows(index_rows)
    return written


# --------------------------------------------------------------------------- command line

_EXIT_PROBLEMS = 2


def add_gradcam_command(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``site gradcam`` to the ``site`` command group."""
    p = commands.add_parser(
        "gradcam",
        help="Grad-CAM heat maps of a trained model on this site's images (kept local)",
        description=(
            "Write, for chosen manifest rows, one PNG per modality with the Grad-CAM heat map "
            "over the image, a side-by-side PNG per row and gradcam.csv. Runs at the site; "
            "nothing is sent anywhere."
        ),
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        type=Path,
        metavar="PT",
        help="model weights: a torch state_dict file (e.g. the run's global_model.pt)",
    )
    p.add_argument("--manifest", required=True, type=Path, metavar="CSV", help="manifest CSV")
    p.add_argument("--task", metavar="TASK", help="task preset the model is for")
    p.add_argument(
        "--task-json", type=Path, metavar="FILE", help="an ad-hoc task's task.json instead"
    )
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    p.add_argument("--site", default=None, metavar="NAME", help="keep only this site's rows")
    p.add_argument(
        "--rows",
        default="",
        metavar="R1,R2",
        help="spreadsheet rows to explain (first data row = 2); default: --limit rows of --split",
    )
    p.add_argument(
        "--split",
        default="test",
        choices=("train", "val", "test"),
        help="split to take rows from when --rows is not given (default test)",
    )
    p.add_argument("--limit", type=int, default=4, help="rows to explain from --split (default 4)")
    p.add_argument(
        "--class",
        dest="class_name",
        default=None,
        metavar="NAME",
        help="class to explain (default: each row's predicted class)",
    )
    p.add_argument("--backbone", default="", help="backbone the checkpoint was trained with")
    p.add_argument("--image-size", type=int, default=0, help="input size it was trained with")
    p.add_argument("--seed", type=int, default=0, help="seed of the automatic split (the run's)")
    p.set_defaults(func=run_gradcam, handler=run_gradcam)
    return p


def run_gradcam(args: argparse.Namespace) -> int:
    """Run ``site gradcam``; returns the exit code (0 ok, 2 bad input)."""
    try:
        task = resolve_task(args.task, getattr(args, "task_json", None)).replace(
            backbone=args.backbone, image_size=args.image_size
        )
        manifest = load_manifest(args.manifest, task, site=args.site, seed=args.seed)
    except (ManifestError, ValueError) as err:
        print(f"error: {err}")
        return _EXIT_PROBLEMS
    if not task.modalities:
        print(f"error: task {task.name!r} has no image modality; Grad-CAM explains images")
        return _EXIT_PROBLEMS
    model = create_model_for_task(task)
    try:
        state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    except (OSError, RuntimeError, AttributeError) as err:
        print(
            f"error: cannot load {args.checkpoint} into {task.model} ({task.backbone}): {err}. "
            "Pass the --backbone (and --task) the checkpoint was trained with."
        )
        return _EXIT_PROBLEMS
    try:
        rows = [int(r) for r in args.rows.replace(" ", "").split(",") if r]
    except ValueError:
        print(f"error: --rows expects comma-separated row numbers, got {args.rows!r}")
        return _EXIT_PROBLEMS
    if not rows:
        rows = manifest.rows(args.split)["row"].astype(int).tolist()[: max(args.limit, 0)]
    if not rows:
        print(f"error: the {args.split} split has no rows to explain")
        return _EXIT_PROBLEMS
    try:
        written = explain_rows(model, manifest, rows, args.out, class_name=args.class_name)
    except ValueError as err:
        print(f"error: {err}")
        return _EXIT_PROBLEMS
    print(f"Grad-CAM of {len(rows)} rows: {len(written)} PNGs in {args.out} (kept at this site)")
    return 0
