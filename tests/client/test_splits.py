from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from client.manifest import load_manifest
from client.splits import SplitError, assign_splits
from tests.client._data import make_site, small_task, write_csv


def _frame(labels_per_patient: list[int], rows_per_patient: int = 2) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "patient_id": [f"P{p}" for p, _ in enumerate(labels_per_patient)] * rows_per_patient,
            "label_index": labels_per_patient * rows_per_patient,
        }
    )


def test_patient_level_stratified_and_deterministic() -> None:
    frame = _frame([0] * 28 + [1] * 12)  # 40 patients, 80 rows
    split = assign_splits(frame, seed=3)
    assert split.name == "split" and split.index.equals(frame.index)
    per_patient = split.groupby(frame["patient_id"]).nunique()
    assert (per_patient == 1).all()  # no patient on two sides
    patients = frame.assign(split=split).drop_duplicates("patient_id")
    counts = patients.groupby(["split", "label_index"]).size()
    for name in ("train", "val", "test"):
        assert counts[name, 0] > 0 and counts[name, 1] > 0  # stratified
    assert patients["split"].value_counts().to_dict() == {"train": 26, "test": 8, "val": 6}
    assert assign_splits(frame, seed=3).equals(split)
    assert not assign_splits(frame, seed=4).equals(split)


@pytest.mark.parametrize(
    ("labels", "expect_test_classes"),
    [
        ([0, 0, 1], {0}),
        ([0, 0, 1, 1], {0, 1}),
        ([0, 1], None),
        ([0, 0, 0, 1, 1, 2], {0, 1}),
        ([0] * 6 + [1] * 2, {0, 1}),  # sklearn's rounding alone would leave class 1 out
    ],
    ids=["2+1", "2+2", "1+1", "3+2+1", "6+2"],
)
def test_tiny_data_still_gives_train_and_test(
    labels: list[int], expect_test_classes: set[int] | None
) -> None:
    frame = _frame(labels, rows_per_patient=1)
    split = assign_splits(frame, seed=0)
    assert (split == "train").any() and (split == "test").any()
    if expect_test_classes is not None:
        assert set(frame["label_index"][split == "test"]) == expect_test_classes
        assert set(frame["label_index"][split == "train"]) == set(labels)


def test_split_errors() -> None:
    with pytest.raises(SplitError, match="at least 2 patients"):
        assign_splits(_frame([0]))
    with pytest.raises(SplitError) as err:
        assign_splits(pd.DataFrame({"x": [1]}), val_fraction=0.6, test_fraction=1.5)
    text = str(err.value)
    for fragment in ("test_fraction must be in [0, 1)", "< 1", "'label_index' is missing"):
        assert fragment in text
    assert isinstance(err.value, ValueError)
    only_train = assign_splits(_frame([0]), val_fraction=0, test_fraction=0)
    assert set(only_train) == {"train"}


def test_load_manifest_splits_when_no_split_column(tmp_path: Path) -> None:
    rows = make_site(tmp_path, labels=("low",) * 7 + ("high",) * 5)
    path = write_csv(tmp_path / "m.csv", rows)
    a = load_manifest(path, small_task(), seed=1, check_images=False)
    b = load_manifest(path, small_task(), seed=1, check_images=False)
    assert a.frame["split"].tolist() == b.frame["split"].tolist()
    assert min(a.class_counts("train")) > 0 and min(a.class_counts("test")) > 0
