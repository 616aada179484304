"""Ad-hoc tasks from the command line (``simulation.adhoc``, ``fedfusion simulate --model``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from client.manifest import ManifestError, load_manifest
from models import UnknownOptionError
from models.tasks import (
    TaskDefinitionError,
    TaskSpec,
    get_task,
    list_tasks,
    load_task_file,
    resolve_task,
)
from simulation.adhoc import AdhocRequest, AdhocTaskError, build_adhoc_task
from simulation.ckd import resolve_ckd_source
from simulation.cli import main

torch.set_num_threads(1)

SIZE = 32

try:
    CKD_CSV: Path | None = resolve_ckd_source()
except FileNotFoundError:
    CKD_CSV = None

CKD_FEATURES = ("age", "bp", "sg", "al", "hemo", "pcv", "htn", "dm")


def _ckd_manifest(folder: Path) -> Path:
    """The raw UCI CKD table as a contract manifest with a ``hospital`` column (2 sites)."""
    if CKD_CSV is None:
        pytest.skip("UCI CKD table absent (set FEDFUSION_CKD_CSV)")
    raw = pd.read_csv(CKD_CSV, dtype=str, keep_default_na=False)
    frame = pd.DataFrame(
        {
            "patient_id": "p" + raw["id"],
            "hospital": ["north" if int(i) % 2 else "south" for i in raw["id"]],
            "label": raw["classification"].str.strip(),
        }
    )
    for column in CKD_FEATURES:
        frame[column] = raw[column]
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


def _image_manifest(
    folder: Path, *, patients: int = 12, labels: tuple[str, str] = ("1", "2")
) -> Path:
    """Two sites of 32 px grey PNGs: label ``labels[1]`` has a bright square, the other not."""
    rng = np.random.default_rng(0)
    rows = []
    for site in ("a", "b"):
        for i in range(patients):
            positive = i % 2 == 1
            pixels = rng.integers(0, 60, size=(SIZE, SIZE), dtype=np.uint8)
            if positive:
                r, c = rng.integers(2, SIZE - 12, size=2)
                pixels[r : r + 10, c : c + 10] = 230
            name = f"img/{site}{i:02d}.png"
            (folder / "img").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels, mode="L").save(folder / name)
            label = labels[1] if positive else labels[0]
            rows.append({"patient_id": f"{site}{i}", "centre": site, "label": label, "us": name})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


# ------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_adhoc_clinical_manifest_on_real_ckd_data(tmp_path: Path) -> None:
    manifest = _ckd_manifest(tmp_path / "data")
    out = tmp_path / "out"
    args = ["simulate", "--manifest", str(manifest), "--site-column", "hospital"]
    args += ["--model", "clinical-logreg", "--features", ",".join(CKD_FEATURES)]
    args += ["--classes", "notckd,ckd", "--rounds", "2", "--out", str(out), "--db", "none"]
    args += ["--run-config", "learning-rate=0.2 local-epochs=3"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["task"]["model"] == "clinical_logreg"
    assert results["task"]["modalities"] == [] and results["sites"] == ["north", "south"]
    final = results["runs"][0]["final"]["global"]
    assert final["n"] == 80 and final["accuracy"] > 0.85 and final["auc"] > 0.9
    task = load_task_file(out / "task.json")
    assert task.categories == {"htn": ("no", "yes"), "dm": ("no", "yes")}
    assert TaskSpec.from_dict(results["task"]) == task
    # a real site checks its manifest against the same definition
    copy = out / "data" / "manifest.csv"  # the hospital column became `site`
    check = ["site", "check", "--manifest", str(copy), "--task-json", str(out / "task.json")]
    assert main([*check, "--site", "north"]) == 0
    run = ["site", "run", "--manifest", str(copy), "--site-id", "north", "--insecure"]
    run += ["--superlink", "127.0.0.1:9092", "--task-json", str(out / "task.json"), "--dry-run"]
    assert main(run) == 0


@pytest.mark.slow
def test_adhoc_single_image_manifest_with_integer_classes(tmp_path: Path) -> None:
    manifest = _image_manifest(tmp_path / "data")
    out = tmp_path / "out"
    args = ["simulate", "--manifest", str(manifest), "--site-column", "centre"]
    args += ["--model", "image-classifier", "--modalities", "us", "--classes", "1,2"]
    args += ["--backbone", "test_resnet", "--image-size", str(SIZE), "--rounds", "1"]
    args += ["--out", str(out), "--db", "none", "--task-name", "lesion"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    task = results["task"]
    assert (task["name"], task["model"], task["classes"]) == (
        "lesion",
        "image_classifier",
        ["1", "2"],
    )
    assert (task["backbone"], task["image_size"], task["modalities"]) == (
        "test_resnet",
        SIZE,
        ["us"],
    )
    final = results["runs"][0]["final"]
    assert set(final["sites"]) == {"a", "b"} and final["global"]["n"] > 0
    assert (out / "report.md").is_file() and (out / "fedavg" / "global_model.pt").is_file()


# ------------------------------------------------------------------------------ errors

ERROR_CASES = [  # (request changes, texts that must all appear)
    ({"features": ("age", "bpp")}, ["feature 'bpp' is not a column", "did you mean 'bp'"]),
    ({"modalities": ("ct",)}, ["modality 'ct' has no column"]),
    ({"site_column": "hospitl"}, ["site column 'hospitl'", "did you mean 'hospital'"]),
    ({"classes": ("notckd", "ckd", "aki")}, ["classes not found in the label column", "aki"]),
    ({"classes": ("0", "1")}, ["classes not found", "values found: ckd, notckd"]),
    ({"classes": ("ckd",)}, ["at least 2 classes", "also holds 'notckd'"]),
    ({"features": ()}, ["the task has no input"]),
    ({"modalities": ("age",), "features": ("age",)}, ["given both as modality and as feature"]),
]


@pytest.mark.parametrize(("changes", "texts"), ERROR_CASES)
def test_adhoc_errors_name_the_problem(tmp_path: Path, changes: dict, texts: list[str]) -> None:
    manifest = _ckd_manifest(tmp_path)
    request = {
        "manifest": manifest,
        "model": "clinical-mlp",
        "site_column": "hospital",
        "features": ("age", "bp"),
        "classes": ("notckd", "ckd"),
        **changes,
    }
    with pytest.raises(AdhocTaskError) as caught:
        build_adhoc_task(AdhocRequest(**request), out_dir=tmp_path / "out")
    for text in texts:
        assert text in str(caught.value)


def test_a_model_that_cannot_take_the_inputs_is_refused(tmp_path: Path) -> None:
    manifest = _image_manifest(tmp_path, patients=2)
    request = AdhocRequest(
        manifest=manifest, model="clinical-gru", site_column="centre", modalities=("us",)
    )
    with pytest.raises(AdhocTaskError, match="takes clinical features but the task has none"):
        build_adhoc_task(request, out_dir=tmp_path)
    request = AdhocRequest(manifest=manifest, model="mufnett", modalities=("us",))
    with pytest.raises(UnknownOptionError, match="mufnet"):
        build_adhoc_task(request, out_dir=tmp_path)


def test_classes_default_to_the_labels_found_sorted_as_integers(tmp_path: Path) -> None:
    manifest = _image_manifest(tmp_path, patients=4, labels=("10", "9"))
    request = AdhocRequest(
        manifest=manifest, model="image-classifier", site_column="centre", modalities=("us",)
    )
    task, copy = build_adhoc_task(request, out_dir=tmp_path / "out")
    assert task.classes == ("9", "10") and task.model == "image_classifier"
    assert (task.backbone, task.image_size) == ("resnet18", 224)
    frame = pd.read_csv(copy, dtype=str)
    assert "site" in frame.columns and "centre" not in frame.columns
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in frame["us"])
    checked = load_manifest(copy, task.replace(image_size=SIZE), check_images=False)
    expected = [1 if label == "10" else 0 for label in frame["label"]]
    assert checked.frame["label_index"].tolist() == expected


CLI_ERROR_CASES = [  # (arguments, text printed)
    (["simulate", "--modalities", "us"], "add --model NAME"),
    (["simulate", "--model", "image-classifier"], "needs --manifest"),
    (["simulate"], "give a scenario"),
]


@pytest.mark.parametrize(("args", "text"), CLI_ERROR_CASES)
def test_cli_explains_incomplete_adhoc_requests(args: list[str], text: str, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(args) == 2
    assert text in capsys.readouterr().out


# ------------------------------------------------------------------ task files and labels

INTEGER_LABEL_CASES = [  # (classes, label cell, index or None for an error)
    (("1", "2"), "1", 0),
    (("1", "2"), "2.0", 1),
    (("1", "2"), "0", None),  # a value, not an index: "0" is no class here
    (("0", "1"), "1", 1),
    (("low", "high"), "1", 1),  # named classes still take their index
]


@pytest.mark.parametrize(("classes", "cell", "index"), INTEGER_LABEL_CASES)
def test_integer_classes_match_label_values(
    tmp_path: Path, classes: tuple[str, ...], cell: str, index: int | None
) -> None:
    (tmp_path / "m.csv").write_text(f"patient_id,label,age\nP1,{cell},40\n")
    task = TaskSpec(
        name="t", model="clinical_logreg", modalities=(), classes=classes, image_size=0,
        backbone="", features=("age",),
    )  # fmt: skip
    if index is None:
        with pytest.raises(ManifestError, match="unknown label '0'"):
            load_manifest(tmp_path / "m.csv", task)
        return
    frame = load_manifest(tmp_path / "m.csv", task, val_fraction=0, test_fraction=0).frame
    assert frame["label_index"].tolist() == [index]


TASK_FILE_CASES = [  # (file text, message)
    ("{", "not valid JSON"),
    ('{"name": "x", "model": "mufnet"}', "missing key 'classes'"),
    ('{"name": "x", "model": "m", "classes": ["a", "b"], "colour": 1}', "unknown key 'colour'"),
    ('{"name": "x", "model": "m", "classes": ["a"], "image_size": -1}', "at least 2 classes"),
    ('{"name": "x", "model": "m", "classes": ["a", "b"], "features": "age"}', "list of"),
]


@pytest.mark.parametrize(("text", "message"), TASK_FILE_CASES)
def test_bad_task_files_are_explained(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "task.json").write_text(text)
    with pytest.raises(TaskDefinitionError, match=message):
        load_task_file(tmp_path / "task.json")


def test_task_json_round_trip_and_resolve(tmp_path: Path) -> None:
    task = TaskSpec(
        name="mine", model="clinical_mlp", modalities=(), classes=("no", "yes"), image_size=0,
        backbone="", features=("sex", "stage"), categories={"sex": ("f", "m")},
        model_kwargs={"drop_rate": 0.2},
    )  # fmt: skip
    (tmp_path / "task.json").write_text(task.to_json())
    loaded = resolve_task(None, tmp_path / "task.json")
    assert loaded == task and loaded.model_kwargs == {"drop_rate": 0.2}
    assert resolve_task("ckd-risk", None).name == "ckd-risk"
    with pytest.raises(TaskDefinitionError, match="not both"):
        resolve_task("ckd-risk", tmp_path / "task.json")


@pytest.mark.parametrize("name", list_tasks())
def test_every_preset_survives_the_task_json_round_trip(name: str) -> None:
    task = get_task(name)
    assert TaskSpec.from_json(task.to_json()) == task
