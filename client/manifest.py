"""The site manifest: read a CSV, check it against a task, and split it by patient.

Row numbers in every message are spreadsheet rows: the header is row 1, the first data row is
row 2 (what a hospital's data manager sees when opening the CSV in Excel / LibreOffice).
See ``docs/data-format.md`` for the format and every message.
"""

from __future__ import annotations

import difflib
import gzip
import importlib.util
import logging
import os
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from client._manifest_csv import CsvProblem, read_manifest_csv
from client._manifest_warnings import manifest_warnings
from client.features import feature_problems
from client.splits import SPLITS, SplitError, assign_splits
from models._options import look_up_option
from models._registry import handles_missing_modalities
from models.factory import task_kind
from models.tasks import TaskSpec

__all__ = [
    "IMAGE_SUFFIXES",
    "Manifest",
    "ManifestError",
    "ManifestProblem",
    "MASK_COLUMN",
    "image_format",
    "image_problem",
    "load_manifest",
    "target_columns",
    "read_manifest_table",
]

logger = logging.getLogger(__name__)

#: file-name suffix -> reader family (``"pil"``, ``"nifti"``, ``"dicom"``, ``"npy"``).
IMAGE_SUFFIXES: dict[str, str] = {
    ".png": "pil",
    ".jpg": "pil",
    ".jpeg": "pil",
    ".tif": "pil",
    ".tiff": "pil",
    ".bmp": "pil",
    ".nii": "nifti",
    ".nii.gz": "nifti",
    ".dcm": "dicom",
    ".dicom": "dicom",
    ".npy": "npy",
}
_FORMATS_TEXT = "PNG, JPEG, TIFF, BMP, NIfTI (.nii, .nii.gz), DICOM (.dcm) or NumPy (.npy)"
_RESERVED = ("row", "label_index")

MASK_COLUMN = "mask"
"""The column holding each row's label-map path in segmentation tasks."""


def target_columns(task: TaskSpec) -> tuple[str, ...]:
    """Manifest columns a row's targets come from: ``("label",)`` for classification,
    ``("mask",)`` for segmentation, ``("mask", "label")`` for segmentation + risk (DFS)."""
    kind = task_kind(task)
    if kind == "segmentation":
        return (MASK_COLUMN,)
    if kind == "segmentation-risk":
        return (MASK_COLUMN, "label")
    return ("label",)


@dataclass(frozen=True)
class ManifestProblem:
    """One problem in a manifest.

    Args:
        row: spreadsheet row (header = 1, first data row = 2); ``None`` for file/column issues.
        column: column name, or ``None``.
        message: what is wrong and what to do.
    """

    row: int | None
    column: str | None
    message: str

    def __str__(self) -> str:
        where = []
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column is not None:
            where.append(f"column {self.column!r}")
        return f"{', '.join(where)}: {self.message}" if where else self.message


class ManifestError(ValueError):
    """A manifest that does not fit its task; ``problems`` lists every problem found.

    Args:
        path: the manifest file.
        problems: every problem, file and column problems first, then by row.
    """

    def __init__(self, path: str | Path, problems: Iterable[ManifestProblem]) -> None:
        self.path = Path(path)
        self.problems = list(problems)
        count = len(self.problems)
        lines = [
            f"{self.path}: {count} problem{'s' if count != 1 else ''} in the manifest "
            "(rows as in a spreadsheet: header = row 1, first data row = row 2)"
        ]
        lines += [f"  - {problem}" for problem in self.problems]
        super().__init__("\n".join(lines))


@dataclass(frozen=True, eq=False)
class Manifest:
    """A checked manifest.

    Attributes:
        path: the CSV file (absolute).
        root: the folder relative image paths start from (the CSV's folder).
        task: the task it was checked against.
        frame: the rows (after the ``site`` filter) with the original columns plus ``row``
            (spreadsheet row), ``label_index`` (int) and ``split``; each modality column holds
            absolute paths (``;``-joined for bags, ``""`` when the modality is missing).
        site: the site the rows were filtered to, if any.
        warnings: legal but odd data (an empty split, a single class, images of several
            sizes or channel counts); logged, printed by ``fedfusion site check``.
    """

    path: Path
    root: Path
    task: TaskSpec
    frame: pd.DataFrame
    site: str | None = None
    warnings: tuple[ManifestProblem, ...] = ()

    def rows(self, split: str) -> pd.DataFrame:
        """The rows of one split (``"train"``, ``"val"`` or ``"test"``), index reset."""
        split = look_up_option("split", split, SPLITS)
        return self.frame[self.frame["split"] == split].reset_index(drop=True)

    def class_counts(self, split: str) -> list[int]:
        """Rows per class in ``split``, in task class order (length ``num_classes``)."""
        labels = self.rows(split)["label_index"].to_numpy(dtype=np.int64)
        return np.bincount(labels, minlength=len(self.task.classes)).tolist()

    def summary(self) -> dict[str, dict[str, object]]:
        """Per split: ``rows``, ``patients``, ``labels`` (count per class name) and
        ``modalities`` (rows with that modality present). Counts only: safe to share."""
        out: dict[str, dict[str, object]] = {}
        for split in SPLITS:
            rows = self.rows(split)
            out[split] = {
                "rows": len(rows),
                "patients": int(rows["patient_id"].nunique()),
                "labels": dict(zip(self.task.classes, self.class_counts(split), strict=True)),
                "modalities": {m: int((rows[m] != "").sum()) for m in self.task.modalities},
            }
        return out


def image_format(path: str | Path) -> str | None:
    """The reader family for ``path`` from its suffix (see ``IMAGE_SUFFIXES``), or None."""
    name = Path(path).name.lower()
    for suffix, family in IMAGE_SUFFIXES.items():
        if name.endswith(suffix):
            return family
    return None


def load_manifest(
    path: str | Path,
    task: TaskSpec,
    *,
    site: str | None = None,
    check_images: bool = True,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
) -> Manifest:
    """Read and check a site manifest; split it by patient when it has no ``split`` column.

    Args:
        path: the CSV file (UTF-8, comma-separated, header row first).
        task: the task whose modalities, classes and features the manifest must provide.
        site: keep only this site's rows when the file has a ``site`` column. Default None.
        check_images: open every image to check it is readable (header / cheap decode).
            Default True; False only checks the files exist.
        seed: seed of the automatic split. Default 0.
        val_fraction: share of patients for validation in the automatic split. Default 0.15.
        test_fraction: share of patients for test in the automatic split. Default 0.2.

    Returns:
        The checked :class:`Manifest`.

    Raises:
        ManifestError: with every problem found (file, columns and rows), all at once.
    """
    path = Path(path).expanduser().absolute()
    root = path.parent
    raw = read_manifest_table(path)
    checker = _Checker(path, root, task, check_images=check_images)
    frame = checker.check_columns(raw)
    frame = checker.filter_site(frame, site)
    frame = checker.check_rows(frame)
    if checker.problems:
        raise ManifestError(path, checker.sorted_problems())

    if "split" not in frame.columns:
        try:
            frame["split"] = assign_splits(
                frame, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction
            )
        except SplitError as err:
            raise ManifestError(path, [ManifestProblem(None, "split", str(err))]) from err
    warnings = tuple(
        ManifestProblem(row, column, message)
        for row, column, message in manifest_warnings(frame, task, checker.shapes)
    )
    for warning in warnings:
        logger.warning("%s: %s", path, warning)
    manifest = Manifest(
        path=path,
        root=root,
        task=task,
        frame=frame.reset_index(drop=True),
        site=site,
        warnings=warnings,
    )
    logger.info(
        "manifest %s: %d rows for task %s (%s)",
        path,
        len(frame),
        task.name,
        ", ".join(f"{k} {v['rows']}" for k, v in manifest.summary().items()),
    )
    return manifest


# -- reading --------------------------------------------------------------------------------


def read_manifest_table(path: str | Path) -> pd.DataFrame:
    """The manifest CSV as stripped strings, unchecked against any task: the header as column
    names (a repeated name gets `` (column N)``), index = spreadsheet row.

    Raises:
        ManifestError: the file cannot be read as a CSV (see ``docs/troubleshooting.md``).
    """
    path = Path(path)
    try:
        return read_manifest_csv(path)
    except CsvProblem as err:
        raise ManifestError(path, [ManifestProblem(err.row, None, err.message)]) from err


# -- checks ---------------------------------------------------------------------------------


class _Checker:
    """Collects problems while checking one manifest."""

    def __init__(self, path: Path, root: Path, task: TaskSpec, *, check_images: bool) -> None:
        self.path = path
        self.root = root
        self.task = task
        self.check_images = check_images
        self.problems: list[ManifestProblem] = []
        self._image_cache: dict[Path, _ImageCheck] = {}
        #: modality column -> [(row, (width, height), channels)] of the readable 2-D images
        self.shapes: dict[str, list[tuple[int, tuple[int, int], int]]] = defaultdict(list)

    def add(self, row: int | None, column: str | None, message: str) -> None:
        self.problems.append(ManifestProblem(row, column, message))

    def sorted_problems(self) -> list[ManifestProblem]:
        return sorted(self.problems, key=lambda p: -1 if p.row is None else p.row)

    # columns -----------------------------------------------------------------------------

    def check_columns(self, frame: pd.DataFrame) -> pd.DataFrame:
        header: list[str] = frame.attrs["header"]
        for name in dict.fromkeys(header):
            positions = [i for i, h in enumerate(header, start=1) if h == name]
            if len(positions) > 1 and name:
                where = ", ".join(map(str, positions))
                self.add(None, name, f"appears {len(positions)} times (columns {where})")
        for name in _RESERVED:
            if name in frame.columns:
                self.add(None, name, "is reserved (fedfusion adds it to the table); rename it")
        self.has_mask = MASK_COLUMN in target_columns(self.task)
        mask = [MASK_COLUMN] if self.has_mask else []
        required = ["patient_id", "label", *self.task.modalities, *mask, *self.task.features]
        present = set(frame.columns)
        spare = [c for c in frame.columns if c not in required]
        for name in required:
            if name not in present:
                self.add(None, name, self._missing_column_message(name, required, spare))
        return frame

    def _missing_column_message(self, name: str, required: list[str], spare: list[str]) -> str:
        kind = "modality" if name in self.task.modalities else "feature"
        kind = kind if name not in ("patient_id", "label") else "required"
        kind = "label-map" if name == MASK_COLUMN else kind
        message = (
            f"{kind} column {name!r} is missing (task {self.task.name!r} needs: "
            f"{', '.join(required)})"
        )
        close = _close_matches(name, spare)
        if close:
            message += f". Did you mean {', '.join(repr(c) for c in close)}?"
        return message

    # site --------------------------------------------------------------------------------

    def filter_site(self, frame: pd.DataFrame, site: str | None) -> pd.DataFrame:
        if site is None:
            return frame
        if "site" not in frame.columns:
            logger.info("%s has no 'site' column; every row belongs to site %s", self.path, site)
            return frame
        sites = sorted(s for s in frame["site"].unique() if s)
        if site not in sites:
            close = _close_matches(site, sites)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            known = ", ".join(sites) or "(none)"
            self.add(None, "site", f"unknown site {site!r}.{hint} Sites in this manifest: {known}")
            return frame.iloc[0:0]
        return frame[frame["site"] == site]

    # rows --------------------------------------------------------------------------------

    def check_rows(self, frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame[(frame != "").any(axis=1)]  # blank lines
        if frame.empty:
            if not any(p.column == "site" for p in self.problems):
                self.add(None, None, "the manifest has no data rows (only a header)")
            return frame
        frame = frame.copy()
        columns = set(frame.columns)
        modalities = [m for m in self.task.modalities if m in columns]
        resolved: dict[str, list[str]] = {m: [] for m in modalities}
        refuse_missing = len(self.task.modalities) >= 2 and not self._model_handles_missing()
        label_index: list[int] = []
        masks: list[str] = []
        for row, record in zip(frame.index, frame.to_dict("records"), strict=True):
            if "patient_id" in columns and not record["patient_id"]:
                self.add(row, "patient_id", "patient_id is empty; every row needs one")
            if "label" in columns:
                label_index.append(self._label(row, record["label"]))
            if modalities and not any(record[m] for m in modalities):
                self.add(
                    row,
                    None,
                    f"every modality is empty ({', '.join(modalities)}); "
                    "a row needs at least one image",
                )
            elif refuse_missing:
                for m in modalities:
                    if not record[m]:
                        self.add(row, m, self._missing_modality_message(m))
            for m in modalities:
                resolved[m].append(self._cell(row, m, record[m]))
            if self.has_mask and MASK_COLUMN in columns:
                masks.append(self._mask_cell(row, record[MASK_COLUMN]))
        for m in modalities:
            frame[m] = resolved[m]
        if self.has_mask and MASK_COLUMN in columns:
            frame[MASK_COLUMN] = masks
        for row, column, message in feature_problems(frame, self.task):
            self.add(row, column, message)
        if "label" in columns:
            frame["label_index"] = np.asarray(label_index, dtype=np.int64)
        if "patient_id" in columns and modalities:
            self._duplicates(frame, modalities)
        if "split" in columns:
            frame["split"] = self._splits(frame)
        if "row" not in columns:  # else a reserved-name problem is already recorded
            frame.insert(0, "row", np.asarray(frame.index, dtype=np.int64))
        return frame

    def _model_handles_missing(self) -> bool:
        try:
            return handles_missing_modalities(self.task.model)
        except ValueError:  # an unknown model is reported where the model is built
            return True

    def _missing_modality_message(self, modality: str) -> str:
        return (
            f"modality {modality!r} is empty, and model {self.task.model!r} cannot handle a "
            "missing modality (only models registered with handles_missing_modalities, e.g. "
            "mufnet and resnet_fusion, mask it out of the fusion); add the image or drop the row"
        )

    def _label(self, row: int, value: str) -> int:
        classes = self.task.classes
        allowed = f"{', '.join(repr(c) for c in classes)} (or their index 0-{len(classes) - 1})"
        if not value:
            self.add(row, "label", f"label is empty; use one of {allowed}")
            return -1
        if value in classes:
            return classes.index(value)
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if _integer_classes(classes):
            # classes named by integer label values ("0", "1" or "1", "2"): a label is a
            # value (1.0 = "1"), never an index, else "0" could mean class "1"
            allowed = f"{', '.join(repr(c) for c in classes)} (the label values)"
            if number.is_integer() and str(int(number)) in classes:
                return classes.index(str(int(number)))
        elif number.is_integer() and 0 <= number < len(classes):
            return int(number)
        close = _close_matches(value, list(classes))
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        self.add(row, "label", f"unknown label {value!r}; use one of {allowed}.{hint}")
        return -1

    def _cell(self, row: int, column: str, value: str) -> str:
        """Check one modality cell; return its absolute path(s) (``;``-joined).

        A bag modality (``task.bags``) may hold a folder or ``;``-separated paths; folders are
        expanded to their image files (sorted by name). Any other modality takes one image.
        """
        if not value:
            return ""
        is_bag = column in self.task.bags
        parts = [p.strip() for p in value.split(";") if p.strip()]
        if is_bag and not parts:
            self.add(row, column, f"empty bag {value!r}: give a folder or ';'-separated paths")
            return ""
        if not is_bag and len(parts) > 1:
            self.add(row, column, self._not_a_bag_message(f"{len(parts)} ';'-separated paths"))
        resolved = []
        for part in parts:
            target = self._resolve(part)
            try:
                if not target.exists():
                    resolved.append(str(target))
                    self.add(row, column, f"file not found: {part!r} (looked for {target})")
                elif target.is_dir():
                    if not is_bag:
                        self.add(row, column, self._not_a_bag_message(f"the folder {part!r}"))
                    images = self._folder(row, column, part, target)
                    resolved += [str(image) for image in images] if is_bag else [str(target)]
                else:
                    resolved.append(str(target))
                    self._file(row, column, part, target)
            except (OSError, ValueError) as err:  # name too long, NUL byte, no permission
                resolved.append(str(target))
                self.add(row, column, f"cannot use the path {part!r}: {err}; fix the path")
        return ";".join(resolved)

    def _mask_cell(self, row: int, value: str) -> str:
        """Check one ``mask`` cell (one label-map file, required); return its absolute path."""
        if not value:
            self.add(
                row,
                MASK_COLUMN,
                f"mask is empty; task {self.task.name!r} segments every row, so each row needs "
                "a label-map file (0 = background, 1 = tumour)",
            )
            return ""
        if ";" in value:
            self.add(row, MASK_COLUMN, "a mask cell takes one label-map file, not a list")
            return ""
        target = self._resolve(value)
        if target.is_dir():
            self.add(row, MASK_COLUMN, f"{value!r} is a folder; give one label-map file")
            return str(target)
        if not target.exists():
            self.add(row, MASK_COLUMN, f"file not found: {value!r} (looked for {target})")
            return str(target)
        self._file(row, MASK_COLUMN, value, target)
        return str(target)

    def _not_a_bag_message(self, what: str) -> str:
        bags = ", ".join(repr(b) for b in self.task.bags)
        takes = f"only {bags} take bags" if bags else "none of its modalities takes a bag"
        return (
            f"holds {what}, but this column takes one image per row "
            f"(task {self.task.name!r}: {takes})"
        )

    def _resolve(self, text: str) -> Path:
        if os.sep == "/" and "\\" in text:
            text = text.replace("\\", "/")  # written on Windows
        path = Path(text)
        try:
            path = path.expanduser()
        except RuntimeError:  # "~user" of an unknown user, or no home directory
            pass  # left as written: reported as not found
        return Path(os.path.normpath(path if path.is_absolute() else self.root / path))

    def _folder(self, row: int, column: str, text: str, folder: Path) -> list[Path]:
        images = _folder_images(folder)
        if not images:
            self.add(row, column, f"empty bag: folder {text!r} holds no images ({_FORMATS_TEXT})")
        for image in images:
            self._file(row, column, os.path.join(text, image.name), image)
        return images

    def _file(self, row: int, column: str, text: str, target: Path) -> None:
        family = image_format(target)
        if family is None:
            self.add(row, column, f"unsupported image type {text!r}; use {_FORMATS_TEXT}")
            return
        if not self.check_images:
            return
        if target not in self._image_cache:
            self._image_cache[target] = _inspect_image(target, family)
        check = self._image_cache[target]
        if check.problem is not None:
            self.add(row, column, f"cannot read image {text!r}: {check.problem}")
        elif check.size is not None and check.channels is not None:
            self.shapes[column].append((row, check.size, check.channels))

    def _duplicates(self, frame: pd.DataFrame, modalities: list[str]) -> None:
        first: dict[tuple[str, ...], int] = {}
        keys = frame[["patient_id", *modalities]].itertuples(index=True, name=None)
        for row, patient, *paths in keys:
            if not any(paths):
                continue
            key = (patient, *paths)
            if key in first:
                self.add(
                    row, None, f"duplicate of row {first[key]} (same patient_id and image paths)"
                )
            else:
                first[key] = row

    def _splits(self, frame: pd.DataFrame) -> pd.Series:
        values = frame["split"].str.lower()
        for row, raw, value in zip(frame.index, frame["split"], values, strict=True):
            if not value:
                self.add(
                    row,
                    "split",
                    "split is empty; with a split column every row needs train, val or test "
                    "(or drop the column to get an automatic split)",
                )
            elif value not in SPLITS:
                close = _close_matches(value, list(SPLITS))
                hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
                self.add(row, "split", f"invalid split {raw!r}; use train, val or test.{hint}")
        if "patient_id" in frame.columns:
            valid = values.isin(SPLITS) & (frame["patient_id"] != "")
            for patient, group in values[valid].groupby(frame["patient_id"][valid], sort=False):
                if group.nunique() > 1:
                    self._patient_in_two_splits(patient, group)
        return values

    def _patient_in_two_splits(self, patient: str, group: pd.Series) -> None:
        parts = []
        for split in SPLITS:
            rows = [int(r) for r in group.index[group == split]]
            if rows:
                label = "row" if len(rows) == 1 else "rows"
                parts.append(f"{split}: {label} {', '.join(map(str, rows))}")
        first_other = int(group.index[group != group.iloc[0]][0])
        self.add(
            first_other,
            "split",
            f"patient {patient!r} is in more than one split ({'; '.join(parts)}); "
            "keep all of a patient's rows in one split",
        )


def _integer_classes(classes: tuple[str, ...]) -> bool:
    """Whether every class name is an integer literal (``"0"``, ``"1"``, ``"-1"``)."""
    return all(c.lstrip("-").isdigit() for c in classes)


def _close_matches(name: str, choices: list[str]) -> list[str]:
    """Near-miss names, case and punctuation insensitive (``B-Mode`` ~ ``bmode``)."""

    def norm(text: str) -> str:
        return re.sub(r"[^0-9a-z]", "", text.lower())

    exact = [c for c in choices if norm(c) == norm(name) and c != name]
    by_norm = {norm(c): c for c in choices}
    fuzzy = difflib.get_close_matches(norm(name), list(by_norm), n=3, cutoff=0.6)
    return list(dict.fromkeys([*exact, *(by_norm[f] for f in fuzzy)]))[:3]


def _folder_images(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and image_format(p) is not None
    )


# -- image checks (cheap: headers, small decodes) -------------------------------------------


def image_problem(path: str | Path) -> str | None:
    """Why the image file ``path`` cannot be read (cheap header / small decode), or None."""
    path = Path(path)
    family = image_format(path)
    if family is None:
        return f"unsupported image type; use {_FORMATS_TEXT}"
    if not path.is_file():
        return "file not found"
    return _image_problem(path, family)


@dataclass(frozen=True)
class _ImageCheck:
    """What the cheap check found: a problem, or the 2-D size and channels when known."""

    problem: str | None
    size: tuple[int, int] | None = None  # (width, height)
    channels: int | None = None


def _inspect_image(path: Path, family: str) -> _ImageCheck:
    """Check ``path``; PNG/JPEG/TIFF/BMP and .npy also give their size and channels."""
    if family == "pil":
        try:
            return _pil_check(path)
        except Exception as err:  # noqa: BLE001 - any reader failure is a problem to report
            return _ImageCheck(f"{type(err).__name__}: {err}")
    problem = _image_problem(path, family)
    if problem is None and family == "npy":
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        if array.ndim == 2:
            return _ImageCheck(None, (array.shape[1], array.shape[0]), 1)
        if array.shape[0] <= 4:  # (C, H, W)
            return _ImageCheck(None, (array.shape[2], array.shape[1]), array.shape[0])
        return _ImageCheck(None, (array.shape[1], array.shape[0]), array.shape[2])
    return _ImageCheck(problem)


def _image_problem(path: Path, family: str) -> str | None:
    """Why ``path`` cannot be read, or None when it looks fine."""
    try:
        if family == "pil":
            return _pil_check(path).problem
        if family == "npy":
            return _npy_problem(path)
        if family == "nifti":
            return _nifti_problem(path)
        return _dicom_problem(path)
    except Exception as err:  # noqa: BLE001 - any reader failure is a problem to report
        return f"{type(err).__name__}: {err}"


def _pil_check(path: Path) -> _ImageCheck:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            size, channels = image.size, len(image.getbands())
            if image.format == "JPEG":
                image.draft("L", (32, 32))  # decode at 1/8 scale: catches truncated files
            if image.format != "PNG":  # PNG: verify() already checked every chunk's CRC
                image.load()
            if min(image.size) < 1:
                return _ImageCheck(f"image has size {image.size}")
    except UnidentifiedImageError:
        return _ImageCheck(
            "not an image (PNG/JPEG/TIFF/BMP) file; it may be text or another format"
        )
    except (OSError, SyntaxError, ValueError) as err:
        return _ImageCheck(f"corrupt or truncated image ({err}); re-export or re-copy the file")
    return _ImageCheck(None, size, channels)


def _npy_problem(path: Path) -> str | None:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        return f"not a readable .npy array ({err})"
    if array.dtype.kind not in "biuf":
        return f"array dtype {array.dtype} is not numeric"
    if array.ndim not in (2, 3) or 0 in array.shape:
        return f"array shape {array.shape}; expected (H, W), (C, H, W) or (H, W, C)"
    return None


def _nifti_problem(path: Path) -> str | None:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            header = handle.read(544)
    except (OSError, EOFError) as err:
        return f"cannot read the file ({err})"
    sizes = {int.from_bytes(header[:4], order) for order in ("little", "big")}
    nifti1 = 348 in sizes and len(header) >= 348 and header[344:347] in (b"n+1", b"ni1")
    nifti2 = 540 in sizes and len(header) >= 540 and header[4:7] in (b"n+2", b"ni2")
    if not (nifti1 or nifti2):
        return "not a NIfTI file (bad header)"
    if _installed("nibabel"):
        import nibabel

        shape = nibabel.load(path).shape
        if len(shape) < 2 or 0 in shape:
            return f"NIfTI shape {shape} is not an image"
        return None
    return _monai_problem(path, "NIfTI", "nibabel")


def _dicom_problem(path: Path) -> str | None:
    if _installed("pydicom"):
        import pydicom

        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        if "Rows" not in dataset or "Columns" not in dataset:
            return "DICOM file has no image (no Rows/Columns)"
        return None
    with open(path, "rb") as handle:
        preamble = handle.read(132)
    if preamble[128:132] != b"DICM":
        return "not a DICOM file (no 'DICM' marker)"
    return _monai_problem(path, "DICOM", "pydicom")


def _monai_problem(path: Path, kind: str, package: str) -> str | None:
    """Fallback: decode with MONAI's readers (e.g. ITK) when the usual library is missing."""
    if not _installed("itk"):
        return f"no {kind} reader is installed (pip install {package})"
    from monai.transforms import LoadImage

    LoadImage(image_only=True)(str(path))
    return None


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None
