"""Tests for the synthetic dual-center B-mode + CEUS generator (``simulation.synthetic``)."""

from __future__ import annotations

import csv
import hashlib
import logging
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from models.tasks import get_task
from simulation.synthetic import (
    DEFAULT_PATIENTS_PER_SITE,
    MANIFEST_COLUMNS,
    generate_dual_center,
)

SMALL = {"patients_per_site": {"center-a": 12, "center-b": 8}, "image_size": 32}

# (kwargs, fragment of the error message)
INVALID_CASES = [
    ({"patients_per_site": {"center-a": -3}}, r"patients_per_site\['center-a'\] must be"),
    ({"patients_per_site": {"center-a": 3}}, "at least 2 patients per class"),
    ({"patients_per_site": {"center-a": 10.0}}, "must be an integer >= 4"),
    ({"patients_per_site": {}}, "at least one site"),
    ({"patients_per_site": {"a/b": 10}}, "they become folder names"),
    ({"patients_per_site": [("x", 10), ("x", 10)]}, "given twice"),
    ({"patients_per_site": 5}, "mapping or \\(site, n\\) pairs"),
    ({"images_per_patient": (0, 2)}, "1 <= min <= max"),
    ({"images_per_patient": (3, 2)}, "1 <= min <= max"),
    ({"images_per_patient": (-1, -1)}, "1 <= min <= max"),
    ({"image_size": 15}, "image_size must be an integer >= 16, got 15"),
    ({"image_size": 32.0}, "image_size must be an integer"),
    ({"high_grade_fraction": 0.0}, "strictly between 0 and 1, got 0.0"),
    ({"high_grade_fraction": 1.0}, "strictly between 0 and 1"),
    ({"high_grade_fraction": -0.2}, "strictly between 0 and 1"),
    ({"high_grade_fraction": float("nan")}, "strictly between 0 and 1"),
    ({"modality_signal": -1.0}, "modality_signal must be a finite number >= 0"),
    ({"scanner_shift": -0.5}, "scanner_shift must be a finite number >= 0"),
    ({"seed": -1}, "seed must be an integer >= 0"),
]


def _read_manifest(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _load(manifest: Path, relative: str) -> np.ndarray:
    return np.asarray(Image.open(manifest.parent / relative), dtype=np.float64) / 255.0


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _crop(image: np.ndarray, fraction: float) -> np.ndarray:
    n = image.shape[0]
    c = int(round(n * (1.0 - fraction) / 2.0))
    return image[c : n - c, c : n - c]


def _bmode_features(image: np.ndarray) -> list[float]:
    """Heterogeneity / irregularity of the smoothed central half, without any lesion mask."""
    n = image.shape[0]
    smooth = ndimage.gaussian_filter(image, n / 48)  # average the speckle away
    mean = ndimage.uniform_filter(smooth, n // 10)
    local_sd = np.sqrt(np.clip(ndimage.uniform_filter(smooth**2, n // 10) - mean**2, 0, None))
    centre = _crop(smooth, 0.5)
    median = np.median(centre)
    gradient = np.hypot(*np.gradient(smooth))
    return [
        np.quantile(_crop(local_sd, 0.5), 0.95) / median,
        _crop(gradient, 0.5).mean() / median,
        (np.quantile(centre, 0.98) - np.quantile(centre, 0.02)) / median,
    ]


def _ceus_features(image: np.ndarray) -> list[float]:
    """Dark (non-enhancing / washed-out) and uneven parts of the smoothed central 40%."""
    n = image.shape[0]
    centre = _crop(ndimage.gaussian_filter(image, n / 48), 0.4)
    median = np.median(centre)
    return [np.quantile(centre, 0.02) / median, centre.std() / median, np.mean(centre < median / 2)]


def _feature_aucs(manifest: Path) -> dict[str, float]:
    """Cross-validated (patient-grouped) image-level AUC of logistic regression on features."""
    rows = _read_manifest(manifest)
    y = np.array([row["label"] == "high" for row in rows], dtype=int)
    groups = np.array([row["patient_id"] for row in rows])
    sites = np.array([row["site"] for row in rows])
    features = {
        "bmode": np.array([_bmode_features(_load(manifest, row["bmode"])) for row in rows]),
        "ceus": np.array([_ceus_features(_load(manifest, row["ceus"])) for row in rows]),
    }
    features["both"] = np.hstack([features["bmode"], features["ceus"]])
    folds = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=0)
    aucs = {}
    for name, x in features.items():
        for site in np.unique(sites):  # per-site standardisation (label-free harmonisation)
            at = sites == site
            x[at] = (x[at] - x[at].mean(axis=0)) / x[at].std(axis=0)
        model = make_pipeline(StandardScaler(), LogisticRegression())
        scores = cross_val_predict(model, x, y, groups=groups, cv=folds, method="predict_proba")
        aucs[name] = float(roc_auc_score(y, scores[:, 1]))
    return aucs


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dual_center(tmp_path_factory.mktemp("small"), **SMALL, seed=3)


def test_manifest_columns_paths_and_images(small: Path):
    assert small.name == "manifest.csv"
    with small.open(newline="", encoding="utf-8") as handle:
        assert next(csv.reader(handle)) == list(MANIFEST_COLUMNS)
    rows = _read_manifest(small)
    task = get_task("rcc-grading")
    assert set(task.modalities) <= set(MANIFEST_COLUMNS) and "split" not in MANIFEST_COLUMNS
    for row in rows:
        assert row["label"] in task.classes
        for modality in task.modalities:
            path = Path(row[modality])
            assert not path.is_absolute() and "\\" not in row[modality]
            assert path.parts[:3] == ("images", row["site"], row["patient_id"])
            assert re.fullmatch(rf"\d+_{modality}\.png", path.name)
            with Image.open(small.parent / path) as image:
                assert image.mode == "L" and image.size == (32, 32)
        assert Path(row["bmode"]).name.split("_")[0] == Path(row["ceus"]).name.split("_")[0]


def test_patients_are_opaque_consistent_and_within_image_bounds(small: Path):
    rows = _read_manifest(small)
    per_patient: dict[str, set[tuple[str, str]]] = {}
    pairs: dict[str, int] = {}
    for row in rows:
        per_patient.setdefault(row["patient_id"], set()).add((row["site"], row["label"]))
        pairs[row["patient_id"]] = pairs.get(row["patient_id"], 0) + 1
    assert all(len(v) == 1 for v in per_patient.values())  # one site and label per patient
    assert all(re.fullmatch(r"[A-Z]-\d{4}", pid) for pid in per_patient)
    assert len(per_patient) == 20 and all(2 <= n <= 4 for n in pairs.values())
    assert len({n for n in pairs.values()}) > 1  # counts vary within the bounds
    sites = {pid: next(iter(v))[0] for pid, v in per_patient.items()}
    assert sorted(sites.values()).count("center-a") == 12
    # ids are not handed out in label order
    ordered = [next(iter(per_patient[pid]))[1] for pid in sorted(per_patient)]
    assert ordered != sorted(ordered) and ordered != sorted(ordered, reverse=True)


def test_defaults_follow_the_study(tmp_path: Path):
    assert dict(DEFAULT_PATIENTS_PER_SITE) == {"center-a": 60, "center-b": 40}
    rows = _read_manifest(generate_dual_center(tmp_path, image_size=16))
    patients = {(r["patient_id"], r["site"], r["label"]) for r in rows}
    assert len(patients) == 100
    # 60 * 0.26 = 15.6 -> 16, 40 * 0.26 = 10.4 -> 10 (study: 26 of 100)
    high = {
        site: sum(1 for _, s, label in patients if s == site and label == "high")
        for site in ("center-a", "center-b")
    }
    assert high == {"center-a": 16, "center-b": 10}
    assert 200 <= len(rows) <= 400


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.8])
def test_class_fraction_per_site(tmp_path: Path, fraction: float):
    sizes = {"north": 30, "south": 17}
    manifest = generate_dual_center(
        tmp_path,
        patients_per_site=sizes,
        images_per_patient=(1, 1),
        image_size=16,
        high_grade_fraction=fraction,
    )
    rows = _read_manifest(manifest)
    assert len(rows) == sum(sizes.values())  # one pair per patient
    for site, n in sizes.items():
        n_high = sum(1 for r in rows if r["site"] == site and r["label"] == "high")
        assert abs(n_high / n - fraction) <= 0.5 / n + 1e-9
        assert 2 <= n_high <= n - 2


def test_tiny_fraction_keeps_two_per_class_and_warns(tmp_path: Path, caplog):
    with caplog.at_level(logging.WARNING, logger="simulation.synthetic"):
        manifest = generate_dual_center(
            tmp_path, patients_per_site={"x": 20}, image_size=16, high_grade_fraction=0.01
        )
    labels = {(r["patient_id"], r["label"]) for r in _read_manifest(manifest)}
    assert sum(1 for _, label in labels if label == "high") == 2
    assert "at least 2 patients" in caplog.text


def test_logs_counts_per_site_and_class(tmp_path: Path, caplog):
    with caplog.at_level(logging.INFO, logger="simulation.synthetic"):
        generate_dual_center(tmp_path, **SMALL)
    assert "center-a: 9 low + 3 high patients" in caplog.text
    assert "center-b: 6 low + 2 high patients" in caplog.text


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path):
    first = _digest(generate_dual_center(tmp_path / "a", **SMALL, seed=7).parent)
    again = _digest(generate_dual_center(tmp_path / "b", **SMALL, seed=7).parent)
    other = _digest(generate_dual_center(tmp_path / "c", **SMALL, seed=8).parent)
    assert first == again
    assert first["manifest.csv"] != other["manifest.csv"]
    assert set(first.values()).isdisjoint(other.values())  # every file differs


def test_ids_are_unique_across_sites(tmp_path: Path):
    sizes = [(f"site-{k}", 5) for k in range(4)]
    rows = _read_manifest(generate_dual_center(tmp_path, patients_per_site=sizes, image_size=16))
    site_of: dict[str, set[str]] = {}
    for row in rows:
        site_of.setdefault(row["patient_id"], set()).add(row["site"])
    assert len(site_of) == 20 and all(len(s) == 1 for s in site_of.values())


def _site_stats(manifest: Path, modality: str) -> dict[str, tuple[float, float]]:
    """Per site: mean intensity and mean per-image contrast (sd), on a 0-255 scale."""
    rows = _read_manifest(manifest)
    stats = {}
    for site in ("center-a", "center-b"):
        images = np.stack([_load(manifest, r[modality]) for r in rows if r["site"] == site])
        stats[site] = (255 * images.mean(), 255 * images.std(axis=(1, 2)).mean())
    return stats


def test_scanner_shift_separates_sites(tmp_path: Path):
    kwargs = {"patients_per_site": {"center-a": 16, "center-b": 16}, "image_size": 48}
    same = generate_dual_center(tmp_path / "same", **kwargs, scanner_shift=0.0)
    shifted = generate_dual_center(tmp_path / "shift", **kwargs, scanner_shift=1.0)
    for modality in ("bmode", "ceus"):
        a0, b0 = _site_stats(same, modality).values()
        a1, b1 = _site_stats(shifted, modality).values()
        assert a0 == a1  # the first site is the reference scanner
        assert abs(a0[0] - b0[0]) < 6 and abs(a0[1] - b0[1]) < 4
        assert abs(a1[0] - b1[0]) > 25  # display gain
        assert abs(a1[0] - b1[0]) > 4 * abs(a0[0] - b0[0])
    # the B-mode of the shifted site is flatter (gamma < 1) and blurrier
    assert _site_stats(shifted, "bmode")["center-b"][1] < _site_stats(same, "bmode")["center-b"][1]


def test_each_modality_carries_signal_and_fusion_beats_both(tmp_path: Path):
    manifest = generate_dual_center(
        tmp_path,
        patients_per_site={"center-a": 180, "center-b": 120},
        images_per_patient=(2, 2),
        image_size=64,
        high_grade_fraction=0.3,
        seed=0,
    )
    aucs = _feature_aucs(manifest)
    logging.getLogger(__name__).info("hand-made feature AUCs: %s", aucs)
    assert aucs["bmode"] > 0.6 and aucs["ceus"] > 0.6
    assert aucs["both"] > max(aucs["bmode"], aucs["ceus"]) + 0.02


def test_no_signal_means_chance(tmp_path: Path):
    manifest = generate_dual_center(
        tmp_path,
        patients_per_site={"center-a": 90, "center-b": 60},
        images_per_patient=(2, 2),
        image_size=64,
        high_grade_fraction=0.3,
        modality_signal=0.0,
    )
    aucs = _feature_aucs(manifest)
    assert all(abs(auc - 0.5) < 0.15 for auc in aucs.values()), aucs


@pytest.mark.parametrize(("kwargs", "message"), INVALID_CASES)
def test_invalid_arguments(tmp_path: Path, kwargs: dict, message: str):
    with pytest.raises(ValueError, match=message):
        generate_dual_center(tmp_path, **kwargs)
    assert not (tmp_path / "manifest.csv").exists()


def test_all_problems_reported_at_once(tmp_path: Path):
    with pytest.raises(ValueError) as error:
        generate_dual_center(tmp_path, image_size=8, high_grade_fraction=2.0, seed=-1)
    text = str(error.value)
    assert "image_size" in text and "high_grade_fraction" in text and "seed" in text


def test_keyword_only(tmp_path: Path):
    with pytest.raises(TypeError):
        generate_dual_center(tmp_path, {"center-a": 10})  # type: ignore[misc]
