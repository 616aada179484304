"""The synthetic CT + clinical generator and the ct-clinical scenario end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from client.manifest import load_manifest
from models.tasks import get_task
from simulation.results_schema import validate_results
from simulation.synthetic_ct import CT_FEATURES, generate_ct_clinical

SITES = {"ct-a": 12, "ct-b": 12, "ct-c": 12, "ct-d": 12}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ct")
    return generate_ct_clinical(out, seed=1, patients_per_site=SITES, image_size=32)


def test_manifest_has_ct_mask_and_clinical_columns(manifest: Path) -> None:
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    assert list(frame.columns) == ["patient_id", "site", "label", "ct", "mask", *CT_FEATURES]
    assert frame["site"].value_counts().to_dict() == SITES
    assert set(frame["label"]) == {"ckd", "notckd"}
    nifti = frame["ct"].str.endswith(".nii.gz")
    assert 0 < nifti.sum() < len(frame)  # some rows as NIfTI, the rest PNG
    assert (nifti == frame["mask"].str.endswith(".nii.gz")).all()
    assert CT_FEATURES == get_task("kidney-tumour-dfs").features


@pytest.mark.parametrize("site", sorted(SITES))
def test_each_site_passes_the_manifest_checks(manifest: Path, site: str) -> None:
    task = get_task("kidney-tumour-dfs").replace(image_size=32)
    checked = load_manifest(manifest, task, site=site, check_images=True)
    assert len(checked.frame) == SITES[site]


def test_risk_follows_the_tumour_size(tmp_path: Path) -> None:
    path = generate_ct_clinical(
        tmp_path, seed=2, patients_per_site={"a": 40, "b": 40}, image_size=32, nifti_share=0.0
    )
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    area = np.array([(np.asarray(_png(tmp_path / p)) > 0).mean() for p in frame["mask"]])
    ckd = (frame["label"] == "ckd").to_numpy()
    assert area[ckd].mean() > 1.5 * area[~ckd].mean()


def _png(path: Path):  # type: ignore[no-untyped-def]
    from PIL import Image

    with Image.open(path) as image:
        return image.copy()


def test_same_seed_same_data(tmp_path: Path) -> None:
    a = generate_ct_clinical(tmp_path / "a", seed=3, patients_per_site={"x": 4, "y": 4})
    b = generate_ct_clinical(tmp_path / "b", seed=3, patients_per_site={"x": 4, "y": 4})
    assert a.read_text() == b.read_text()


def test_bad_arguments_are_all_reported(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as err:
        generate_ct_clinical(tmp_path, nifti_share=2.0, label="size", image_size=4)
    for text in ("nifti_share", "label", "image_size"):
        assert text in str(err.value)


@pytest.mark.slow
def test_ct_clinical_scenario_end_to_end(tmp_path: Path) -> None:
    from simulation.cli import main

    scenario = tmp_path / "ct-small.toml"
    scenario.write_text(
        'task = "kidney-tumour-dfs"\n'
        "[data]\n"
        'generator = "ct-clinical"\n'
        "sites = { ct-a = 8, ct-b = 8, ct-c = 8, ct-d = 8 }\n"
        "image-size = 32\n"
        "[run]\n"
        "image-size = 32\n"
        "local-epochs = 1\n"
        "batch-size = 4\n"
    )
    out = tmp_path / "out"
    code = main(["simulate", str(scenario), "--out", str(out), "--rounds", "1", "--cpus", "2"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    validate_results(results)
    (run,) = results["runs"]
    final = run["final"]
    assert set(final["sites"]) == {"ct-a", "ct-b", "ct-c", "ct-d"}
    for metrics in (final["global"], *final["sites"].values()):
        assert 0 <= metrics["iou"] <= metrics["dice"] <= 1
        assert "auc" in metrics
    assert final["global"]["n"] == sum(m["n"] for m in final["sites"].values())
    report = (out / "report.md").read_text()
    assert "| Dice | IoU |" in report and "DiceMetric" in report
