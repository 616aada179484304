"""Tests for the synthetic three-hospital lymph-node generator (``simulation.synthetic_lymph``)."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from client.manifest import load_manifest
from models.tasks import get_task
from simulation.runner import _GENERATORS, prepare_data
from simulation.scenario import load_scenario
from simulation.synthetic_lymph import CLASSES, MANIFEST_COLUMNS, generate_lymph_node

SMALL = {
    "patients_per_site": {"a": 12, "b": 12, "c": 12},
    "image_size": 32,
    "images_per_patient": (1, 1),
}

INVALID_CASES = [  # (kwargs, fragment of the error message)
    ({"patients_per_site": {"a": 5}}, "at least 2 patients per class"),
    ({"patients_per_site": {}}, "at least one site"),
    ({"patients_per_site": {"a/b": 10}}, "folder names"),
    ({"patients_per_site": [("x", 10), ("x", 10)]}, "given twice"),
    ({"class_mix": {"zz": [0.2, 0.3, 0.5]}}, "class_mix names site 'zz'"),
    ({"class_mix": {"hospital-a": [0.5, 0.5]}}, r"class_mix\['hospital-a'\] must be 3 shares"),
    ({"class_mix": {"hospital-a": [0.5, 0.5, 0.5]}}, "summing to 1"),
    ({"images_per_patient": (2, 1)}, "1 <= min <= max"),
    ({"image_size": 8}, "image_size must be an integer >= 16"),
    ({"modality_signal": -1}, "modality_signal must be a finite number >= 0"),
    ({"noise_sd": float("nan")}, "noise_sd must be a finite number >= 0"),
    ({"scanner_shift": -0.1}, "scanner_shift must be"),
    ({"seed": -3}, "seed must be an integer >= 0"),
]


def _rows(manifest: Path) -> list[dict[str, str]]:
    with manifest.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_lymph_node(tmp_path_factory.mktemp("lymph"), seed=1, **SMALL)


def test_manifest_follows_the_contract(small: Path) -> None:
    rows = _rows(small)
    assert list(rows[0]) == list(MANIFEST_COLUMNS)
    assert {r["label"] for r in rows} == set(CLASSES)
    assert len({r["patient_id"] for r in rows}) == 36
    for site in ("a", "b", "c"):
        manifest = load_manifest(small, get_task("lymph-node").replace(image_size=32), site=site)
        assert all(manifest.summary()["train"]["labels"].values())  # every class trains


def test_image_modes_and_sizes(small: Path) -> None:
    row = _rows(small)[0]
    modes = {m: Image.open(small.parent / row[m]) for m in ("us2d", "cdfi", "elasto")}
    assert {m: image.mode for m, image in modes.items()} == {
        "us2d": "L",
        "cdfi": "RGB",
        "elasto": "RGB",
    }
    assert all(image.size == (32, 32) for image in modes.values())


def test_sites_have_different_class_mixes(tmp_path: Path) -> None:
    manifest = generate_lymph_node(
        tmp_path, patients_per_site={"onco": 40, "general": 40, "haem": 40}, image_size=16
    )
    patients = {(r["site"], r["patient_id"], r["label"]) for r in _rows(manifest)}
    counts = {
        site: [sum(1 for s, _, y in patients if s == site and y == c) for c in CLASSES]
        for site in ("onco", "general", "haem")
    }
    assert counts == {"onco": [18, 8, 14], "general": [10, 6, 24], "haem": [12, 16, 12]}


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    first = generate_lymph_node(tmp_path / "one", seed=4, **SMALL)
    second = generate_lymph_node(tmp_path / "two", seed=4, **SMALL)
    assert _digest(first.parent) == _digest(second.parent)
    other = generate_lymph_node(tmp_path / "three", seed=5, **SMALL)
    assert _digest(first.parent) != _digest(other.parent)


def _class_means(manifest: Path, feature) -> list[float]:  # type: ignore[no-untyped-def]
    values: dict[str, list[float]] = {c: [] for c in CLASSES}
    for row in _rows(manifest):
        values[row["label"]].append(feature(row, manifest.parent))
    return [float(np.mean(values[c])) for c in CLASSES]


def _blue_share(row: dict[str, str], root: Path) -> float:
    """Elastography: share of hard (blue) pixels in the central half of the image."""
    image = np.asarray(Image.open(root / row["elasto"]), dtype=np.float64)[8:24, 8:24]
    return float(np.mean(image[..., 2] > image[..., 0] + 40))


def _flow_share(row: dict[str, str], root: Path) -> float:
    """CDFI: share of coloured (flow) pixels."""
    image = np.asarray(Image.open(root / row["cdfi"]), dtype=np.float64)
    return float(np.mean(np.abs(image[..., 0] - image[..., 2]) > 60))


def test_images_carry_the_documented_class_signal(tmp_path: Path) -> None:
    manifest = generate_lymph_node(
        tmp_path,
        patients_per_site={"a": 30},
        class_mix={"a": [1 / 3, 1 / 3, 1 / 3]},
        image_size=32,
        images_per_patient=(1, 1),
        noise_sd=0.05,
    )
    metastatic, lymphoma, benign = _class_means(manifest, _blue_share)
    assert metastatic > lymphoma > benign  # stiffness order
    metastatic, lymphoma, benign = _class_means(manifest, _flow_share)
    assert lymphoma > metastatic > benign  # rich mixed flow > peripheral > scant hilar


def test_null_signal_control(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING"):
        generate_lymph_node(tmp_path, modality_signal=0.0, **SMALL)
    assert "null control" in caplog.text


@pytest.mark.parametrize(("kwargs", "message"), INVALID_CASES)
def test_invalid_settings_are_explained(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_lymph_node(tmp_path, **kwargs)


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as err:
        generate_lymph_node(tmp_path, image_size=4, seed=-1, noise_sd=-2)
    assert str(err.value).count("\n- ") == 3


def test_three_hospital_scenario_uses_the_generator(tmp_path: Path) -> None:
    assert _GENERATORS["lymph-node"] is generate_lymph_node
    scenario = load_scenario("three-hospital")
    assert scenario.task == "lymph-node"
    small = {**scenario.data, "sites": {"h1": 6, "h2": 6, "h3": 6}, "image-size": 16}
    small["class-mix"] = {"h1": [0.5, 0.2, 0.3]}
    manifest = prepare_data(
        type(scenario)(name="x", task=scenario.task, data=small), tmp_path, seed=0
    )
    assert {r["site"] for r in _rows(manifest)} == {"h1", "h2", "h3"}
