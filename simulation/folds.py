"""Patient-level k-fold cross-validation folds, made within each site.

The studies' protocol: every patient is in the test fold exactly once, a patient's rows never
straddle train and test, and folds are stratified by the patient's label. Folds are made per
site (each hospital's patients are split into K folds), so fold k's test set is the union of
every site's fold k and every method sees exactly the same folds.

A fold is written as a manifest with a ``split`` column (``train`` / ``test``; no
validation rows: no model is selected on them) and absolute image paths, so the same
ClientApp loading path reads it.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from client.manifest import load_manifest
from models.tasks import TaskSpec

__all__ = ["FoldError", "all_rows", "assign_folds", "fold_manifests", "write_manifest"]

_log = logging.getLogger(__name__)

_ADDED_COLUMNS = ("row", "label_index")  # added by load_manifest; not part of a manifest


class FoldError(ValueError):
    """The data cannot be split into the requested folds."""


def all_rows(manifest: Path, task: TaskSpec, *, check_images: bool = True) -> pd.DataFrame:
    """Every row of a multi-site manifest, checked, with absolute paths and ``label_index``."""
    loaded = load_manifest(manifest, task, check_images=check_images, val_fraction=0.0)
    frame = loaded.frame.copy()
    if "site" not in frame.columns:
        raise FoldError(f"{manifest}: a simulation needs a 'site' column")
    return frame


def assign_folds(frame: pd.DataFrame, *, folds: int, seed: int) -> pd.Series:
    """Fold index (0..folds-1) of every row: patients grouped, stratified, within each site.

    Args:
        frame: rows with ``site``, ``patient_id`` and ``label_index``.
        folds: K >= 2.
        seed: shuffles patients before the split; another seed gives other folds.

    Raises:
        FoldError: K < 2, or a site with fewer patients than K.
    """
    if folds < 2:
        raise FoldError(f"folds must be >= 2, got {folds}")
    out = pd.Series(-1, index=frame.index, name="fold", dtype=int)
    problems = []
    for site, rows in frame.groupby("site", sort=True):
        patients = rows["patient_id"].astype(str)
        if patients.nunique() < folds:
            problems.append(f"site {site!r} has {patients.nunique()} patients, fewer than {folds}")
            continue
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        with warnings.catch_warnings():  # a rare class with < K patients: sklearn warns, fine
            warnings.simplefilter("ignore", UserWarning)
            for k, (_, test) in enumerate(splitter.split(rows, rows["label_index"], patients)):
                out.loc[rows.index[test]] = k
    if problems:
        raise FoldError(f"cannot make {folds} patient-level folds: " + "; ".join(problems))
    return out


def write_manifest(frame: pd.DataFrame, path: Path) -> Path:
    """Write rows (from :func:`all_rows`, possibly changed) back as a manifest CSV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.drop(columns=[c for c in _ADDED_COLUMNS if c in frame.columns]).to_csv(path, index=False)
    return path


def fold_manifests(
    manifest: Path, task: TaskSpec, *, folds: int, seed: int, out_dir: Path
) -> list[Path]:
    """Write one manifest per fold (``out_dir/fold-<k>.csv``, k from 1) and return them."""
    frame = all_rows(manifest, task, check_images=False)
    if "split" in pd.read_csv(manifest, nrows=0).columns:
        _log.warning("%s: its split column is replaced by the cross-validation folds", manifest)
    fold = assign_folds(frame, folds=folds, seed=seed)
    paths = []
    for k in range(folds):
        rows = frame.copy()
        rows["split"] = ["test" if f == k else "train" for f in fold]
        paths.append(write_manifest(rows, out_dir / f"fold-{k + 1}.csv"))
    return paths
