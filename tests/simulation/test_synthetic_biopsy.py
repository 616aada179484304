"""Synthetic biopsies: the manifest loads as the glomerular-disease task, bags of 2-6 fields."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from client.manifest import load_manifest
from models.tasks import get_task
from simulation.synthetic_biopsy import CLASSES, generate_biopsy

TASK = get_task("glomerular-disease").replace(image_size=32)
SITES = {"lab-a": 8, "lab-b": 7}


@pytest.fixture(scope="module")
def manifest_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_biopsy(tmp_path_factory.mktemp("bx"), patients_per_site=SITES, image_size=32)


def test_manifest_loads_with_bags_of_two_to_six(manifest_path: Path) -> None:
    raw = pd.read_csv(manifest_path, dtype=str)
    assert list(raw.columns) == ["patient_id", "site", "label", "tem", "om", "im"]
    assert raw["site"].value_counts().to_dict() == SITES
    assert set(raw["label"]) == set(CLASSES)
    folders = raw["tem"].str.endswith("/tem")
    assert folders.any() and (~folders).any()  # both bag spellings are used
    manifest = load_manifest(manifest_path, TASK)
    sizes = manifest.frame["tem"].str.count(";") + 1
    assert sizes.between(2, 6).all() and sizes.nunique() > 1
    assert manifest.frame["patient_id"].is_unique


def test_class_patterns_differ(manifest_path: Path) -> None:
    raw = pd.read_csv(manifest_path, dtype=str)
    root = manifest_path.parent
    # LN's immunofluorescence is "full house": brighter on average than IgAN's and MN's
    green = {
        label: np.mean([np.asarray(Image.open(root / p))[..., 1].mean() for p in group["im"]])
        for label, group in raw.groupby("label")
    }
    assert green["LN"] > max(green["IgAN"], green["MN"])


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    digests = []
    for name in ("a", "b"):
        path = generate_biopsy(tmp_path / name, patients_per_site={"x": 6}, image_size=16)
        files = sorted(p for p in path.parent.rglob("*.png"))
        digests.append([hashlib.sha256(p.read_bytes()).hexdigest() for p in files])
    assert digests[0] == digests[1]


def test_bad_arguments_are_all_listed(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as err:
        generate_biopsy(
            tmp_path,
            patients_per_site={"x": 3},
            tem_per_patient=(4, 2),
            blank_fraction=1.5,
            class_mix={"y": (1, 1, 1)},
        )
    for text in ("patients_per_site", "tem_per_patient", "blank_fraction", "unknown sites"):
        assert text in str(err.value)
