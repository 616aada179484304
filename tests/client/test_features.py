"""Clinical feature columns at a site: checks, site-fitted preprocessing, dataset items."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from client.dataset import ManifestDataset, make_loader
from client.features import (
    FeatureTransform,
    parse_category,
    parse_number,
    site_feature_transform,
)
from client.manifest import ManifestError, load_manifest
from models.tasks import TaskSpec
from tests.client._data import make_site, small_task, write_csv

NUMBER_CASES = [  # (cell, value; None = nan)
    ("42", 42.0),
    (" 1.5\t", 1.5),
    ("", None),
    ("?", None),
    ("NA", None),
    ("\t", None),
    ("-3e2", -300.0),
]
CATEGORY_CASES = [  # (cell, index; None = missing)
    ("yes", 1),
    ("\tno", 0),
    (" YES ", 1),
    ("", None),
    ("?", None),
]
BAD_CELL_CASES = [  # (column, value, text of the manifest problem)
    ("age", "forty", "numeric feature: 'forty' is not a number"),
    ("age", "inf", "not a finite number"),
    ("htn", "maybe", "categorical feature: unknown level 'maybe'; use one of 'no', 'yes'"),
    ("stage", "IV", "unknown level 'IV'"),
]


def _task(**changes: object) -> TaskSpec:
    values: dict[str, object] = {
        "name": "toy-clinical",
        "model": "clinical_logreg",
        "modalities": (),
        "classes": ("no", "yes"),
        "image_size": 0,
        "backbone": "",
        "features": ("age", "htn", "stage"),
        "categories": {"htn": ("no", "yes"), "stage": ("I", "II", "III")},
        **changes,
    }
    return TaskSpec(**values)  # type: ignore[arg-type]


def _rows(n: int = 12) -> list[dict[str, str]]:
    rows = []
    for i in range(n):
        rows.append(
            {
                "patient_id": f"P{i:02d}",
                "label": ("no", "yes")[i % 2],
                "age": str(20 + 5 * i) if i != 3 else "",
                "htn": ("no", "yes", "\tyes ")[i % 3] if i != 4 else "?",
                "stage": ("I", "II", "III", "II")[i % 4],
            }
        )
    return rows


def _with_split(rows: list[dict[str, str]], test: set[int]) -> list[dict[str, str]]:
    return [{**r, "split": "test" if i in test else "train"} for i, r in enumerate(rows)]


@pytest.mark.parametrize(("cell", "value"), NUMBER_CASES)
def test_parse_number(cell: str, value: float | None) -> None:
    result = parse_number(cell)
    assert math.isnan(result) if value is None else result == value


@pytest.mark.parametrize(("cell", "index"), CATEGORY_CASES)
def test_parse_category(cell: str, index: int | None) -> None:
    assert parse_category(cell, ("no", "yes")) == index


@pytest.mark.parametrize(("column", "value", "text"), BAD_CELL_CASES)
def test_bad_feature_cells_are_manifest_problems(
    tmp_path: Path, column: str, value: str, text: str
) -> None:
    rows = _rows()
    rows[5][column] = value
    path = write_csv(tmp_path / "m.csv", rows)
    with pytest.raises(ManifestError) as err:
        load_manifest(path, _task())
    (problem,) = err.value.problems
    assert (problem.row, problem.column) == (7, column)
    assert text in problem.message


def test_a_column_of_bad_cells_is_summarised(tmp_path: Path) -> None:
    rows = [{**r, "age": "old"} for r in _rows()]
    with pytest.raises(ManifestError) as err:
        load_manifest(write_csv(tmp_path / "m.csv", rows), _task())
    assert len(err.value.problems) == 6
    assert "7 more bad numeric cells in this column (rows 7-13)" in str(err.value)


def test_missing_feature_column_is_reported(tmp_path: Path) -> None:
    rows = [{k: v for k, v in r.items() if k != "stage"} for r in _rows()]
    with pytest.raises(ManifestError, match="feature column 'stage' is missing"):
        load_manifest(write_csv(tmp_path / "m.csv", rows), _task())


def test_fit_imputes_codes_and_standardises_from_training_rows(tmp_path: Path) -> None:
    rows = _with_split(_rows(), test={10, 11})
    manifest = load_manifest(write_csv(tmp_path / "m.csv", rows), _task())
    transform = site_feature_transform(manifest)
    assert transform is site_feature_transform(manifest)  # fitted once per manifest
    train_ages = [20 + 5 * i for i in range(10) if i != 3]
    fill = float(np.median(train_ages))
    imputed = np.array([fill if i == 3 else 20 + 5 * i for i in range(10)], dtype=float)
    assert transform.numeric["age"] == pytest.approx((fill, imputed.mean(), imputed.std()))
    assert transform.names == ["age", "htn=yes", "stage=I", "stage=II", "stage=III"]
    assert transform.n_rows == 10
    out = transform.transform(manifest.rows("train"))
    assert out.shape == (10, 5) and out.dtype == np.float32
    assert out[:, 0].mean() == pytest.approx(0.0, abs=1e-6)
    assert out[:, 0].std() == pytest.approx(1.0, abs=1e-5)
    train = manifest.rows("train").set_index("patient_id")
    htn = dict(zip(train.index, out[:, 1], strict=True))
    assert htn["P02"] == 1.0  # "\tyes " -> yes
    assert htn["P04"] == 1.0  # "?" -> the training mode (yes: 5 of 9 rows)
    assert np.all(out[:, 2:].sum(axis=1) == 1.0)  # one-hot stage


def test_test_rows_use_the_training_statistics(tmp_path: Path) -> None:
    rows = _with_split(_rows(), test={10, 11})
    rows[10]["age"] = "1000"
    manifest = load_manifest(write_csv(tmp_path / "m.csv", rows), _task())
    transform = site_feature_transform(manifest)
    test = transform.transform(manifest.rows("test"))
    fill, mean, std = transform.numeric["age"]
    assert test[0, 0] == pytest.approx((1000 - mean) / std)
    assert mean < 100  # the outlier in the test split did not move the statistics


def test_transform_round_trips_through_json(tmp_path: Path) -> None:
    manifest = load_manifest(write_csv(tmp_path / "m.csv", _rows()), _task())
    transform = site_feature_transform(manifest)
    again = FeatureTransform.load(transform.save(tmp_path / "features.json"))
    assert again == transform
    frame = manifest.rows("test")
    np.testing.assert_array_equal(again.transform(frame), transform.transform(frame))
    with pytest.raises(ValueError, match="not a saved FeatureTransform"):
        FeatureTransform.from_dict({"features": []})


def test_a_feature_without_training_values_is_zero(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    rows = [{**r, "age": ""} for r in _rows()]
    manifest = load_manifest(write_csv(tmp_path / "m.csv", rows), _task())
    with caplog.at_level("WARNING"):
        out = site_feature_transform(manifest).transform(manifest.rows("train"))
    assert np.all(out[:, 0] == 0) and "no value" in caplog.text


def test_clinical_only_dataset_items_are_features_then_label(tmp_path: Path) -> None:
    manifest = load_manifest(write_csv(tmp_path / "m.csv", _rows()), _task())
    dataset = ManifestDataset(manifest, "train", train=True)
    features, label = dataset[0]
    assert features.shape == (5,) and features.dtype == torch.float32
    assert label.dtype == torch.int64
    batch = next(iter(make_loader(manifest, "train", batch_size=4, train=True)))
    assert [tuple(t.shape) for t in batch] == [(4, 5), (4,)]


def test_image_and_feature_items_put_features_after_the_images(tmp_path: Path) -> None:
    rows = make_site(tmp_path, extra={"age": [str(30 + i) for i in range(10)]})
    task = small_task().replace(features=("age",))
    manifest = load_manifest(write_csv(tmp_path / "m.csv", rows), task)
    item = ManifestDataset(manifest, "train", train=False)[0]
    assert [tuple(t.shape) for t in item] == [(3, 16, 16), (3, 16, 16), (1,), ()]


def test_an_explicit_transform_overrides_the_site_fit(tmp_path: Path) -> None:
    manifest = load_manifest(write_csv(tmp_path / "m.csv", _rows()), _task())
    fixed = FeatureTransform(
        features=("age", "htn", "stage"),
        categories={"htn": ("no", "yes"), "stage": ("I", "II", "III")},
        numeric={"age": (0.0, 0.0, 1.0)},
        fills={"htn": 0, "stage": 0},
        n_rows=0,
    )
    dataset = ManifestDataset(manifest, "train", train=False, feature_transform=fixed)
    ages = pd.to_numeric(manifest.rows("train")["age"], errors="coerce").fillna(0.0)
    np.testing.assert_allclose([dataset[i][0][0].item() for i in range(len(dataset))], ages)
