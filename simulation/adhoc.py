"""Ad-hoc tasks declared on the command line, for any manifest that follows the contract.

``fedfusion simulate --manifest CSV --site-column site --model NAME --modalities a,b
--features f1,f2 --classes x,y [--backbone ... --image-size ...]`` needs no preset: this
module checks the request against the manifest's header and label column and turns it into a
:class:`~models.tasks.TaskSpec`, which the runner writes to ``OUT/task.json`` and sends to the
simulated sites in the ``task-json`` run-config key (a real site checks its manifest against
the same file: ``fedfusion site check --task-json task.json``).

- **Columns**: every modality, feature and the site column must be a manifest column (an
  unknown name gets "did you mean ..."); a modality with no column is an error.
- **Classes**: names found in the ``label`` column, or the integer values found there
  (``--classes 0,1`` for a 0/1 column; ``1.0`` matches ``1``). Omitted: every distinct
  label, sorted (numerically for integers), so the last is the positive class of a binary
  task. A given class that no row has, or a label that is not a given class, is an error.
- **Features**: a column whose non-missing cells are all numbers is numeric; otherwise it is
  categorical and its levels are the distinct values found (case-insensitive). The levels
  are written into ``task.json``, so every site builds the same input layout.
- **Site column**: another name than ``site`` is renamed in a copy of the manifest under
  ``OUT/data/`` (image paths made absolute); the original file is never changed.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from client.features import MISSING_TOKENS
from models._registry import model_entrypoint
from models.factory import model_kwargs_for_task
from models.tasks import TaskSpec

__all__ = ["AdhocRequest", "AdhocTaskError", "build_adhoc_task", "DEFAULT_BACKBONE"]

_log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "resnet18"
DEFAULT_IMAGE_SIZE = 224
_MANY_LEVELS = 20  # warn: a categorical feature with more levels is probably a typo'd number


class AdhocTaskError(ValueError):
    """An ad-hoc task that does not fit its manifest; the message lists every problem."""


@dataclass(frozen=True)
class AdhocRequest:
    """What the command line asked for.

    Args:
        manifest: the manifest CSV (one file, all sites).
        model: registered model name (``-`` may stand for ``_``: ``image-classifier``).
        site_column: the column naming each row's site. Default ``"site"``.
        modalities: image columns, in the order the model takes them.
        features: clinical feature columns, in order.
        classes: class names or integer label values; empty = every label found, sorted.
        backbone: timm backbone for image models; "" = ``resnet18``.
        image_size: input side in pixels for image models; 0 = 224.
        name: the task's name (run store, reports). Default ``"adhoc"``.
    """

    manifest: Path
    model: str
    site_column: str = "site"
    modalities: tuple[str, ...] = ()
    features: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    backbone: str = ""
    image_size: int = 0
    name: str = "adhoc"


def split_list(text: str | None) -> tuple[str, ...]:
    """``"a, b,c"`` -> ``("a", "b", "c")``; None or "" -> ``()``."""
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise AdhocTaskError(f"manifest {str(path)!r} is not a file")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise AdhocTaskError(f"{path}: cannot read the manifest as CSV: {err}") from err
    return frame.map(str.strip)


def _hint(name: str, columns: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(columns), n=3, cutoff=0.6)
    lowered = [c for c in columns if c.lower() == name.lower() and c != name]
    close = list(dict.fromkeys([*lowered, *close]))[:3]
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def _as_int(text: str) -> int | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() else None


def _classes(
    labels: pd.Series, given: tuple[str, ...], path: Path, problems: list[str]
) -> tuple[str, ...]:
    found = sorted(set(labels[labels != ""]))
    integers = {v: _as_int(v) for v in found}
    numeric = bool(found) and all(i is not None for i in integers.values())
    if numeric:  # 0 / 1.0 / 2: compare as integers, name the classes "0", "1", "2"
        values = sorted({i for i in integers.values() if i is not None})
        found_names = [str(v) for v in values]
    else:
        found_names = found
    if not given:
        if len(found_names) < 2:
            problems.append(
                f"the label column of {path} holds {len(found_names)} distinct value(s) "
                f"{found_names}; a task needs at least 2 classes"
            )
        return tuple(found_names)
    names = list(given)
    if numeric and all(_as_int(c) is not None for c in names):
        names = [str(_as_int(c)) for c in names]
    if len(set(names)) != len(names):
        problems.append(f"--classes repeats a class: {', '.join(given)}")
    if len(names) < 2:
        problems.append(f"--classes needs at least 2 classes, got {', '.join(given) or 'none'}")
    absent = [c for c in names if c not in found_names]
    if absent:
        problems.append(
            f"classes not found in the label column of {path}: {', '.join(absent)} "
            f"(values found: {', '.join(found_names) or 'none'}); give the label values "
            "themselves (names, or the integers the column holds)"
        )
    unlisted = [v for v in found_names if v not in names]
    if unlisted and not absent:
        counts = labels.map(lambda v: str(integers.get(v)) if numeric else v).value_counts()
        problems.append(
            f"the label column of {path} also holds "
            + ", ".join(f"{v!r} ({int(counts.get(v, 0))} rows)" for v in unlisted)
            + f", which --classes ({', '.join(names)}) does not list; add them or drop those rows"
        )
    return tuple(names)


def _categories(frame: pd.DataFrame, features: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Feature -> its levels, for the features that are not all numbers."""
    out: dict[str, tuple[str, ...]] = {}
    for name in features:
        cells = [v for v in frame[name] if v.lower() not in MISSING_TOKENS]
        if all(_is_number(v) for v in cells):
            continue
        levels: dict[str, str] = {}
        for value in cells:
            levels.setdefault(value.lower(), value)
        out[name] = tuple(sorted(levels.values(), key=str.lower))
        if len(out[name]) > _MANY_LEVELS:
            _log.warning(
                "feature %s has %d category levels (%s, ...): is it a numeric column with a "
                "stray word in it?",
                name,
                len(out[name]),
                ", ".join(out[name][:5]),
            )
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def build_adhoc_task(request: AdhocRequest, *, out_dir: Path) -> tuple[TaskSpec, Path]:
    """Check ``request`` against its manifest and build the task.

    Args:
        request: the command line's choices.
        out_dir: the run's output folder (a renamed-site-column copy of the manifest goes
            to ``out_dir/data/manifest.csv``).

    Returns:
        ``(task, manifest)``: the task and the manifest the simulation reads (the given file,
        or the copy with a ``site`` column).

    Raises:
        AdhocTaskError: listing every problem at once.
        UnknownOptionError: an unknown model name (with "did you mean").
    """
    path = Path(request.manifest).expanduser().absolute()
    model = model_entrypoint(request.model).__name__
    frame = _read(path)
    columns = list(frame.columns)
    problems: list[str] = []
    where = f"in {path} (columns: {', '.join(columns)})"
    for kind, names in (("modality", request.modalities), ("feature", request.features)):
        for name in names:
            if name not in columns:
                what = "has no column" if kind == "modality" else "is not a column"
                problems.append(f"{kind} {name!r} {what} {where}{_hint(name, columns)}")
    both = sorted(set(request.modalities) & set(request.features))
    if both:
        problems.append(f"{', '.join(both)} given both as modality and as feature")
    for flag, names in (("--modalities", request.modalities), ("--features", request.features)):
        if len(set(names)) != len(names):
            problems.append(f"{flag} repeats a column: {', '.join(names)}")
    if not request.modalities and not request.features:
        problems.append("the task has no input: give --modalities and/or --features")
    for name, flag in (
        (request.site_column, "--site-column"),
        ("label", None),
        ("patient_id", None),
    ):
        if name not in columns:
            what = f"site column {name!r} ({flag})" if flag else f"required column {name!r}"
            problems.append(f"{what} is not a column {where}{_hint(name, columns)}")
    classes: tuple[str, ...] = ()
    if "label" in columns:
        classes = _classes(frame["label"], request.classes, path, problems)
    present = [f for f in request.features if f in columns]
    categories = _categories(frame, present)
    if request.site_column in columns:
        sites = sorted(s for s in set(frame[request.site_column]) if s)
        if len(sites) < 2:
            problems.append(
                f"site column {request.site_column!r} names {len(sites)} site(s) {sites}; "
                "a simulated federation needs at least 2"
            )
    task: TaskSpec | None = None
    if not problems:
        images = bool(request.modalities)
        task = TaskSpec(
            name=request.name,
            model=model,
            modalities=request.modalities,
            classes=classes,
            image_size=(request.image_size or DEFAULT_IMAGE_SIZE) if images else 0,
            backbone=(request.backbone or DEFAULT_BACKBONE) if images else "",
            features=request.features,
            categories=categories,
            description=f"ad-hoc task on {path.name}: {model}, "
            + ", ".join(
                part
                for part in (
                    f"images {', '.join(request.modalities)}" if images else "",
                    f"{len(request.features)} clinical features" if request.features else "",
                )
                if part
            )
            + f"; classes {', '.join(classes)}",
        )
        try:
            model_kwargs_for_task(task)  # the model takes these inputs (no build yet)
        except ValueError as err:
            problems.append(str(err))
    if problems or task is None:
        raise AdhocTaskError(
            f"ad-hoc task does not fit {path} ({len(problems)} problem"
            f"{'s' if len(problems) != 1 else ''}):\n" + "\n".join(f"  - {p}" for p in problems)
        )
    if categories:
        _log.info("categorical features (levels from the manifest): %s", categories)
    return task, _with_site_column(path, frame, request, out_dir)


def _with_site_column(
    path: Path, frame: pd.DataFrame, request: AdhocRequest, out_dir: Path
) -> Path:
    if request.site_column == "site":
        return path
    copy = frame.drop(columns=["site"], errors="ignore").rename(
        columns={request.site_column: "site"}
    )
    for modality in request.modalities:
        copy[modality] = [_absolute(path.parent, cell) for cell in copy[modality]]
    target = out_dir / "data" / "manifest.csv"
    target.parent.mkdir(parents=True, exist_ok=True)
    copy.to_csv(target, index=False)
    _log.info("site column %s renamed to site in %s", request.site_column, target)
    return target


def _absolute(root: Path, cell: str) -> str:
    parts = [p.strip() for p in cell.split(";") if p.strip()]
    return ";".join(p if os.path.isabs(p) else str(root / p) for p in parts)
