"""Patient-level, stratified, seeded train/val/test splits.

One patient never lands on two sides of a split. Patients are stratified by their label (the
most frequent label among their rows; ties go to the smaller class index). Normal-sized data
goes through :func:`sklearn.model_selection.train_test_split` on the patient table. Small data
(a class with too few patients for scikit-learn's stratification, or rounding that leaves a
class out of a split) falls back to a per-class allocation that gives every class a patient in
train, one in test where it has >= 2 patients, and one in val where it has >= 3.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

__all__ = ["SPLITS", "SplitError", "assign_splits"]

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")


class SplitError(ValueError):
    """The data cannot be split as asked (too few patients, bad fractions, missing labels)."""


def assign_splits(
    frame: pd.DataFrame,
    *,
    label_column: str = "label_index",
    patient_column: str = "patient_id",
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
) -> pd.Series:
    """Assign every row of ``frame`` to ``"train"``, ``"val"`` or ``"test"`` by patient.

    Args:
        frame: one row per sample; needs ``label_column`` and ``patient_column``.
        label_column: integer class index per row. Default ``"label_index"``.
        patient_column: patient identifier per row. Default ``"patient_id"``.
        seed: random seed; the same data and seed always give the same split. Default 0.
        val_fraction: share of patients for validation, in [0, 1). Default 0.15.
        test_fraction: share of patients for test, in [0, 1). Default 0.2.

    Returns:
        A string Series named ``"split"`` with ``frame``'s index.

    Raises:
        SplitError: bad fractions, missing columns or labels, or too few patients to give
            both train and test (when ``test_fraction > 0``) at least one patient.
    """
    problems = _check_arguments(frame, label_column, patient_column, val_fraction, test_fraction)
    if problems:
        raise SplitError("cannot split: " + "; ".join(problems))

    patients = _patient_table(frame, label_column, patient_column)
    n = len(patients)
    needed = 1 + (test_fraction > 0)
    if n < needed:
        raise SplitError(
            f"cannot split {n} patient(s) into train and test: at least {needed} patients are "
            "needed (add patients, or give the manifest a 'split' column)"
        )

    ids = patients.index.to_numpy()
    labels = patients.to_numpy()
    try:
        by_patient = _sklearn_split(ids, labels, seed, val_fraction, test_fraction)
        missing = _uncovered(by_patient, ids, labels, val_fraction, test_fraction)
        if missing:
            raise ValueError(missing)
    except ValueError as err:
        logger.info("stratified split fell back to per-class allocation (%s)", err)
        by_patient = _small_split(ids, labels, seed, val_fraction, test_fraction)

    out = frame[patient_column].astype(str).map(by_patient)
    out.name = "split"
    counts = out.value_counts()
    for name in SPLITS:
        if name == "val" and val_fraction == 0 or name == "test" and test_fraction == 0:
            continue
        if counts.get(name, 0) == 0:
            logger.warning("the %s split is empty (%d patients in all)", name, n)
    return out


def _check_arguments(
    frame: pd.DataFrame,
    label_column: str,
    patient_column: str,
    val_fraction: float,
    test_fraction: float,
) -> list[str]:
    problems = []
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            problems.append(f"{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1:
        problems.append(
            f"val_fraction + test_fraction must be < 1, got {val_fraction + test_fraction}"
        )
    for column in (label_column, patient_column):
        if column not in frame.columns:
            problems.append(f"column {column!r} is missing (columns: {', '.join(frame.columns)})")
    if label_column in frame.columns and frame[label_column].isna().any():
        problems.append(f"column {label_column!r} has empty values")
    if len(frame) == 0:
        problems.append("the frame has no rows")
    return problems


def _patient_table(frame: pd.DataFrame, label_column: str, patient_column: str) -> pd.Series:
    """One label per patient: the most frequent among their rows (ties: the smallest index)."""
    labels = frame[label_column].astype(int)
    patients = frame[patient_column].astype(str)
    return labels.groupby(patients, sort=True).agg(_majority).astype(int)


def _majority(labels: pd.Series) -> int:
    counts = labels.value_counts()
    return int(counts[counts == counts.max()].index.min())


def _sklearn_split(
    ids: np.ndarray,
    labels: np.ndarray,
    seed: int,
    val_fraction: float,
    test_fraction: float,
) -> dict[str, str]:
    """Two stratified ``train_test_split`` calls on the patient table (raises ValueError)."""
    out: dict[str, str] = {}
    rest_ids, rest_labels = ids, labels
    if test_fraction > 0:
        rest_ids, test_ids, rest_labels, _ = train_test_split(
            ids, labels, test_size=test_fraction, stratify=labels, random_state=seed
        )
        out.update(dict.fromkeys(test_ids, "test"))
    if val_fraction > 0:
        share = val_fraction / (1 - test_fraction)
        rest_ids, val_ids = train_test_split(
            rest_ids, test_size=share, stratify=rest_labels, random_state=seed
        )
        out.update(dict.fromkeys(val_ids, "val"))
    out.update(dict.fromkeys(rest_ids, "train"))
    return out


def _uncovered(
    by_patient: dict[str, str],
    ids: np.ndarray,
    labels: np.ndarray,
    val_fraction: float,
    test_fraction: float,
) -> str:
    """Which class misses a split it could have had a patient in ('' when none).

    Rounding in small data can leave a class out of test or val although it has enough
    patients; the per-class allocation then does better.
    """
    gaps = []
    for label in np.unique(labels):
        members = ids[labels == label]
        present = {by_patient[m] for m in members}
        wanted = {"train"}
        if test_fraction > 0 and len(members) >= 2:
            wanted.add("test")
        if val_fraction > 0 and len(members) >= 3:
            wanted.add("val")
        gaps += [f"class {label} has no {split} patient" for split in sorted(wanted - present)]
    return "; ".join(gaps)


def _small_split(
    ids: np.ndarray,
    labels: np.ndarray,
    seed: int,
    val_fraction: float,
    test_fraction: float,
) -> dict[str, str]:
    """Per-class allocation for tiny data: each class keeps >= 1 train patient.

    A class with >= 2 patients gives at least one to test (when ``test_fraction > 0``), one
    with >= 3 at least one to val (when ``val_fraction > 0``). If test is still empty (every
    class has a single patient), a random train patient moves to test; with >= 2 patients
    train keeps at least one.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, str] = {}
    for label in np.unique(labels):
        members = rng.permutation(ids[labels == label])
        n = len(members)
        n_test = round(n * test_fraction)
        n_val = round(n * val_fraction)
        if test_fraction > 0 and n >= 2:
            n_test = max(1, n_test)
        if val_fraction > 0 and n >= 3:
            n_val = max(1, n_val)
        while n - n_test - n_val < 1:
            if n_val > 0:
                n_val -= 1
            else:
                n_test -= 1
        out.update(dict.fromkeys(members[:n_test], "test"))
        out.update(dict.fromkeys(members[n_test : n_test + n_val], "val"))
        out.update(dict.fromkeys(members[n_test + n_val :], "train"))
    if test_fraction > 0 and "test" not in out.values():
        train = sorted(k for k, v in out.items() if v == "train")
        out[train[int(rng.integers(len(train)))]] = "test"
    return out
