"""Partitioners and cross-validation folds on small generated data (no training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from models.tasks import get_task
from simulation.folds import FoldError, all_rows, assign_folds, fold_manifests
from simulation.partition import PartitionError, parse_partition, partition_manifest
from simulation.synthetic import generate_dual_center

TASK = get_task("rcc-grading").replace(backbone="test_efficientnet", image_size=32)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data")
    return generate_dual_center(
        out,
        patients_per_site={"north": 60, "south": 40},
        images_per_patient=(1, 2),
        image_size=16,
        high_grade_fraction=0.3,
        seed=1,
    )


PARSE_ERRORS = [
    ("dirichlet", {"sites": 4}, "concentration"),
    ("dirichlet:-1", {"sites": 4}, "concentration"),
    ("iid", {}, "--sites"),
    ("natural", {"sites": 3}, "--sites needs a partition"),
    ("iid:3", {"sites": 3}, "takes no argument"),
    ("natural", {"missing": "ceus:x"}, "MODALITY:SITES"),
]


@pytest.mark.parametrize(("text", "kwargs", "message"), PARSE_ERRORS)
def test_parse_partition_rejects_bad_specs(text: str, kwargs: dict, message: str) -> None:
    with pytest.raises(PartitionError, match=message):
        parse_partition(text, **kwargs)


def test_parse_partition_suggests_a_kind() -> None:
    with pytest.raises(ValueError, match="dirichlet"):
        parse_partition("dirichlett:0.5", sites=3)


def _sites(path: Path) -> pd.DataFrame:
    return all_rows(path, TASK, check_images=False)


@pytest.mark.parametrize("kind", ["iid", "dirichlet:0.1", "dirichlet:100", "quantity:0.3"])
def test_partitions_keep_patients_whole_and_every_site_populated(
    manifest: Path, tmp_path: Path, kind: str
) -> None:
    spec = parse_partition(kind, sites=10)
    path, summary = partition_manifest(manifest, TASK, spec, seed=0, out_dir=tmp_path)
    frame = _sites(path)
    assert sorted(frame["site"].unique()) == [f"site-{i:02d}" for i in range(1, 11)]
    assert frame.groupby("patient_id")["site"].nunique().max() == 1  # no patient on two sites
    assert len(frame) == len(_sites(manifest))  # nothing lost
    assert min(s["patients"] for s in summary["sites"].values()) >= 2
    assert {"source_site"} <= set(frame.columns)


def _label_skew(path: Path) -> float:
    """Mean over sites of |share of high grade at the site - overall share|."""
    frame = _sites(path)
    overall = frame["label_index"].mean()
    return float(frame.groupby("site")["label_index"].mean().sub(overall).abs().mean())


def _size_spread(path: Path) -> float:
    sizes = _sites(path).groupby("site")["patient_id"].nunique()
    return float(sizes.std() / sizes.mean())


def test_dirichlet_alpha_controls_label_skew_and_quantity_alpha_size_skew(
    manifest: Path, tmp_path: Path
) -> None:
    def run(kind: str) -> Path:
        spec = parse_partition(kind, sites=5)
        return partition_manifest(manifest, TASK, spec, seed=2, out_dir=tmp_path / kind)[0]

    assert _label_skew(run("dirichlet:0.1")) > 2 * _label_skew(run("dirichlet:100"))
    assert _size_spread(run("quantity:0.2")) > 2 * _size_spread(run("iid"))


def test_fifty_sites(manifest: Path, tmp_path: Path) -> None:
    spec = parse_partition("dirichlet:0.5", sites=50)
    path, summary = partition_manifest(manifest, TASK, spec, seed=0, out_dir=tmp_path)
    assert len(summary["sites"]) == 50 and _sites(path)["site"].nunique() == 50
    with pytest.raises(PartitionError, match="cannot give 60 sites"):
        partition_manifest(
            manifest, TASK, parse_partition("iid", sites=60), seed=0, out_dir=tmp_path
        )


def test_intensity_shift_rewrites_images_per_site_and_missing_modality_empties_cells(
    manifest: Path, tmp_path: Path
) -> None:
    spec = parse_partition("natural", intensity_shift=2.0, missing="ceus:1")
    path, summary = partition_manifest(manifest, TASK, spec, seed=0, out_dir=tmp_path)
    frame = _sites(path)
    original = _sites(manifest)
    north = frame[frame["site"] == "north"]
    south = frame[frame["site"] == "south"]
    assert (north["bmode"].to_numpy() == original[original["site"] == "north"]["bmode"]).all()
    assert summary["sites"]["south"]["missing"] == ["ceus"] and (south["ceus"] == "").all()
    assert (north["ceus"] != "").all()
    before = original[original["site"] == "south"]["bmode"].iloc[0]
    after = south["bmode"].iloc[0]
    assert Path(after).is_relative_to(tmp_path)
    a = np.asarray(Image.open(before), dtype=float)
    b = np.asarray(Image.open(after), dtype=float)
    assert a.shape == b.shape and np.abs(a - b).mean() > 1.0  # the scanner changed the image


def test_folds_group_patients_within_sites_and_cover_every_row_once(
    manifest: Path, tmp_path: Path
) -> None:
    paths = fold_manifests(manifest, TASK, folds=3, seed=0, out_dir=tmp_path)
    frames = [pd.read_csv(p, dtype=str, keep_default_na=False) for p in paths]
    tested = pd.concat([f[f["split"] == "test"] for f in frames])
    assert len(tested) == len(frames[0])  # each row in exactly one test fold
    assert tested.duplicated(["patient_id", "bmode"]).sum() == 0
    for frame in frames:
        assert set(frame["split"]) == {"train", "test"}
        assert frame.groupby("patient_id")["split"].nunique().max() == 1
        for _, rows in frame.groupby("site"):  # every site tests in every fold
            assert (rows["split"] == "test").any()
        assert Path(frame["bmode"].iloc[0]).is_absolute()
    other = assign_folds(_sites(manifest), folds=3, seed=1)
    assert not other.equals(assign_folds(_sites(manifest), folds=3, seed=0))
    with pytest.raises(FoldError, match="fewer than 50"):
        assign_folds(_sites(manifest), folds=50, seed=0)
