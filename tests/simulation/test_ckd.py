"""The UCI CKD table split into simulated sites (``simulation.ckd``) and the clinical models on it.

Needs ``kidney_disease.csv`` (UCI Chronic Kidney Disease); tests that read it skip when it is
absent. Set ``FEDFUSION_CKD_CSV`` to use a copy elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from client.dataset import make_loader
from client.manifest import load_manifest
from client.train import TrainConfig, evaluate, train_local
from models import create_model_for_task, get_task
from simulation.ckd import CKD_FEATURES, prepare_ckd_sites, resolve_ckd_source

torch.set_num_threads(1)

try:
    CKD_CSV: Path | None = resolve_ckd_source()
except FileNotFoundError as _err:
    CKD_CSV, _REASON = None, str(_err)
else:
    _REASON = ""

needs_csv = pytest.mark.skipif(
    CKD_CSV is None, reason=f"UCI CKD table absent, set FEDFUSION_CKD_CSV: {_REASON}"
)

SITES = {"clinic-a": 150, "clinic-b": 130, "clinic-c": 120}

BAD_SITE_CASES = [  # (patients_per_site, text)
    ({"a": 300, "b": 200}, "asks for 500 patients"),
    ({"a": 5}, "integer >= 10"),
    ({}, "got no site"),
    ({"a": 20.5}, "integer >= 10"),
]

MODEL_CASES = [  # (task preset, local epochs): one site, trained centrally, test accuracy
    ("ckd-risk-logreg", 20),
    ("ckd-risk-mlp", 20),
]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if CKD_CSV is None:
        pytest.skip(f"UCI CKD table absent: {_REASON}")
    return prepare_ckd_sites(tmp_path_factory.mktemp("ckd"), patients_per_site=SITES, seed=0)


@needs_csv
def test_sites_are_a_stratified_split_of_all_patients(manifest: Path) -> None:
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    assert list(frame.columns) == ["patient_id", "site", "label", *CKD_FEATURES]
    assert frame["site"].value_counts().to_dict() == SITES
    assert frame["patient_id"].is_unique and len(frame) == 400
    share = frame.groupby("site")["label"].apply(lambda s: (s == "ckd").mean())
    assert share.between(0.6, 0.65).all()  # 250 of 400 in the table
    assert not frame.map(lambda v: v != v.strip()).any().any()  # no stray tabs left


@needs_csv
@pytest.mark.parametrize("site", sorted(SITES))
def test_each_site_passes_the_manifest_checks(manifest: Path, site: str) -> None:
    loaded = load_manifest(manifest, get_task("ckd-risk"), site=site)
    assert len(loaded.frame) == SITES[site]
    assert loaded.summary()["test"]["rows"] > 0


@needs_csv
@pytest.mark.parametrize(("patients", "text"), BAD_SITE_CASES)
def test_bad_site_counts_are_explained(tmp_path: Path, patients: dict, text: str) -> None:
    with pytest.raises(ValueError, match=text):
        prepare_ckd_sites(tmp_path, patients_per_site=patients)


def test_missing_table_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="FEDFUSION_CKD_CSV"):
        prepare_ckd_sites(tmp_path, source=tmp_path / "nowhere.csv")


@needs_csv
@pytest.mark.parametrize(("task_name", "epochs"), MODEL_CASES)
def test_clinical_models_learn_ckd_at_one_site(manifest: Path, task_name: str, epochs: int) -> None:
    task = get_task(task_name)
    site = load_manifest(manifest, task, site="clinic-a")
    torch.manual_seed(0)
    model = create_model_for_task(task)
    loader = make_loader(site, "train", batch_size=16, train=True, balanced=True)
    train_local(
        model,
        loader,
        config=TrainConfig(epochs=epochs, learning_rate=0.2),
        class_counts=site.class_counts("train"),
    )
    result = evaluate(model, make_loader(site, "test", batch_size=64, train=False), num_classes=2)
    assert result.metrics["accuracy"] >= 0.85, result.metrics
    assert result.metrics["auc"] >= 0.9


@pytest.mark.slow
@needs_csv
def test_ckd_clinical_scenario_end_to_end(tmp_path: Path) -> None:
    from simulation.cli import main

    out = tmp_path / "out"
    code = main(
        [
            "simulate",
            "ckd-clinical",
            "--out",
            str(out),
            "--rounds",
            "2",
            "--cpus",
            "2",
            "--run-config",
            'task="ckd-risk-logreg"',
        ]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["task"]["name"] == "ckd-risk-logreg" and results["task"]["modalities"] == []
    (run,) = results["runs"]
    assert set(run["final"]["sites"]) == set(SITES)
    assert run["final"]["global"]["n"] == sum(m["n"] for m in run["final"]["sites"].values())
    assert "AUC (95% CI, DeLong)" in (out / "report.md").read_text()
