from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from client.manifest import ManifestError, ManifestProblem, image_format, load_manifest
from tests.client._data import make_site, small_task, write_csv

TASK = small_task()
BAG_TASK = TASK.replace(bags=("bmode",))  # bmode cells may hold a folder or ';'-separated paths

Rows = list[dict[str, str]]


@pytest.fixture()
def site(tmp_path: Path) -> tuple[Path, Rows]:
    """Four valid rows (P00-P03, low/high) with PNGs under tmp_path/img."""
    return tmp_path, make_site(tmp_path, labels=("low", "high", "low", "high"))


def _problems(err: pytest.ExceptionInfo[ManifestError]) -> list[tuple[int | None, str | None]]:
    return [(p.row, p.column) for p in err.value.problems]


def test_valid_manifest(site: tuple[Path, Rows]) -> None:
    root, rows = site
    rows[1]["ceus"] = ""  # a missing modality is allowed
    rows[2]["label"] = "1"  # an integer index is a label too
    manifest = load_manifest(write_csv(root / "m.csv", rows), TASK, check_images=True)
    frame = manifest.frame
    assert manifest.root == root and manifest.path == root / "m.csv"
    assert frame["row"].tolist() == [2, 3, 4, 5]
    assert frame["label_index"].tolist() == [0, 1, 1, 1]
    assert frame.loc[0, "bmode"] == str(root / "img/p00_bmode.png")
    assert frame.loc[1, "ceus"] == ""
    assert set(frame["split"]) <= {"train", "val", "test"}
    summary = manifest.summary()
    assert set(summary) == {"train", "val", "test"}
    assert sum(s["rows"] for s in summary.values()) == 4
    assert sum(s["modalities"]["ceus"] for s in summary.values()) == 3
    assert sum(sum(manifest.class_counts(s)) for s in summary) == 4
    assert set(summary["train"]["labels"]) == {"low", "high"}


def test_all_problems_in_one_error(site: tuple[Path, Rows]) -> None:
    root, rows = site
    rows[0]["bmode"] = "img/nowhere.png"  # row 2
    (root / "img/text.png").write_text("this is not a PNG")
    rows[1]["ceus"] = "img/text.png"  # row 3
    rows[3]["label"] = "medium"  # row 5
    path = write_csv(root / "bad.csv", rows)
    with pytest.raises(ManifestError) as err:
        load_manifest(path, TASK)
    assert _problems(err) == [(2, "bmode"), (3, "ceus"), (5, "label")]
    text = str(err.value)
    assert "bad.csv" in text and "3 problems" in text
    assert "row 2, column 'bmode': file not found: 'img/nowhere.png'" in text
    assert "row 3, column 'ceus': cannot read image 'img/text.png'" in text
    assert "unknown label 'medium'; use one of 'low', 'high'" in text
    assert isinstance(err.value, ValueError)
    # without image checks only the existence of files counts
    with pytest.raises(ManifestError) as err:
        load_manifest(path, TASK, check_images=False)
    assert _problems(err) == [(2, "bmode"), (5, "label")]


def _rename(old: str, new: str) -> Callable[[Rows], Rows]:
    return lambda rows: [{(new if k == old else k): v for k, v in r.items()} for r in rows]


def _set(index: int, **values: str) -> Callable[[Rows], Rows]:
    def edit(rows: Rows) -> Rows:
        rows[index].update(values)
        return rows

    return edit


def _add_column(name: str, values: list[str]) -> Callable[[Rows], Rows]:
    def edit(rows: Rows) -> Rows:
        for row, value in zip(rows, values, strict=True):
            row[name] = value
        return rows

    return edit


def _duplicate_first(rows: Rows) -> Rows:
    return [*rows, dict(rows[0])]


# (case id, edit of the four valid rows, load_manifest kwargs, expected row, column, fragment)
CASES = [
    ("missing column", _rename("bmode", "B-Mode"), {}, None, "bmode", "Did you mean 'B-Mode'?"),
    ("missing label column", _rename("label", "lable"), {}, None, "label", "Did you mean 'lable'"),
    ("duplicate row", _duplicate_first, {}, 6, None, "duplicate of row 2"),
    (
        "patient in two splits",
        lambda r: _add_column("split", ["train", "val", "test", "test"])(
            _set(2, patient_id="P00")(r)
        ),
        {},
        4,
        "split",
        "patient 'P00' is in more than one split (train: row 2; test: row 4)",
    ),
    (
        "bad split value",
        _add_column("split", ["train", "valid", "test", "train"]),
        {},
        3,
        "split",
        "invalid split 'valid'; use train, val or test. Did you mean 'val'?",
    ),
    (
        "empty split value",
        _add_column("split", ["train", "", "test", "train"]),
        {},
        3,
        "split",
        "split is empty",
    ),
    ("empty patient id", _set(1, patient_id=""), {}, 3, "patient_id", "patient_id is empty"),
    ("empty label", _set(2, label=""), {}, 4, "label", "label is empty"),
    ("label index out of range", _set(2, label="2"), {}, 4, "label", "unknown label '2'"),
    ("label case hint", _set(0, label="High"), {}, 2, "label", "Did you mean 'high'?"),
    ("all modalities empty", _set(3, bmode="", ceus=""), {}, 5, None, "every modality is empty"),
    (
        "unknown site",
        _add_column("site", ["north", "north", "south", "south"]),
        {"site": "nort"},
        None,
        "site",
        "unknown site 'nort'. Did you mean 'north'? Sites in this manifest: north, south",
    ),
    ("unsupported type", _set(0, bmode="m.csv"), {}, 2, "bmode", "unsupported image type"),
    ("reserved column", _add_column("row", ["1", "2", "3", "4"]), {}, None, "row", "reserved"),
    (
        "bag with a missing file",
        _set(1, ceus="img/p01_ceus.png; img/gone.png"),
        {},
        3,
        "ceus",
        "gone.png",
    ),
]


@pytest.mark.parametrize(
    ("edit", "kwargs", "row", "column", "fragment"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_check(
    site: tuple[Path, Rows],
    edit: Callable[[Rows], Rows],
    kwargs: dict[str, object],
    row: int | None,
    column: str | None,
    fragment: str,
) -> None:
    root, rows = site
    rows = edit(rows)
    header = list(dict.fromkeys(k for r in rows for k in r))
    path = write_csv(root / "m.csv", rows, header)
    with pytest.raises(ManifestError) as err:
        load_manifest(path, TASK, **kwargs)
    matching = [p for p in err.value.problems if (p.row, p.column) == (row, column)]
    assert matching, f"no problem at ({row}, {column}) in:\n{err.value}"
    assert any(fragment in p.message for p in matching), str(err.value)


def test_file_level_problems(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="manifest file not found") as err:
        load_manifest(tmp_path / "nope.csv", TASK)
    assert err.value.problems == [ManifestProblem(None, None, err.value.problems[0].message)]
    bad = tmp_path / "broken.csv"
    bad.write_text("patient_id,label,bmode,ceus\nP1,low,a.png,b.png\nP2,high,a.png,b.png,extra\n")
    with pytest.raises(ManifestError, match=r"broken\.csv[\s\S]*row 3: the row has 5 cells"):
        load_manifest(bad, TASK)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ManifestError, match="the file is empty"):
        load_manifest(tmp_path / "empty.csv", TASK)
    (tmp_path / "header.csv").write_text("patient_id,label,bmode,ceus\n")
    with pytest.raises(ManifestError, match="no data rows"):
        load_manifest(tmp_path / "header.csv", TASK)
    (tmp_path / "dup.csv").write_text("patient_id,label,label,bmode,ceus\n")
    with pytest.raises(ManifestError, match=r"column 'label': appears 2 times \(columns 2, 3\)"):
        load_manifest(tmp_path / "dup.csv", TASK)


def test_blank_lines_keep_row_numbers(site: tuple[Path, Rows]) -> None:
    root, rows = site
    path = write_csv(root / "m.csv", rows)
    lines = path.read_text().splitlines()
    lines.insert(2, "")  # blank spreadsheet row 3
    lines[3] = lines[3].replace("high", "mid")  # now spreadsheet row 4
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ManifestError) as err:
        load_manifest(path, TASK)
    assert _problems(err) == [(4, "label")]


def test_site_filter_and_split_column(site: tuple[Path, Rows]) -> None:
    root, rows = site
    rows = _add_column("site", ["north", "south", "north", "south"])(rows)
    rows = _add_column("split", ["train", "train", "Test", "test"])(rows)
    manifest = load_manifest(write_csv(root / "m.csv", rows), TASK, site="north")
    assert manifest.site == "north"
    assert manifest.frame["row"].tolist() == [2, 4]
    assert manifest.frame["split"].tolist() == ["train", "test"]
    assert manifest.class_counts("train") == [1, 0]
    with pytest.raises(ValueError, match="Did you mean 'test'"):
        manifest.rows("tset")


def test_bags_absolute_paths_and_other_formats(site: tuple[Path, Rows]) -> None:
    root, rows = site
    bag = root / "bag"
    bag.mkdir()
    np.save(bag / "field1.npy", np.zeros((8, 8), np.float32))
    np.save(bag / "field2.npy", np.ones((3, 8, 8), np.float32))
    rows[0]["bmode"] = "bag"  # a folder bag
    rows[1]["bmode"] = "img/p01_bmode.png; img/p00_ceus.png"  # a ;-separated bag
    rows[2]["ceus"] = str(root / "img/p02_ceus.png")  # absolute
    manifest = load_manifest(write_csv(root / "m.csv", rows), BAG_TASK)
    assert manifest.frame.loc[0, "bmode"] == f"{bag}/field1.npy;{bag}/field2.npy"  # expanded
    assert manifest.frame.loc[1, "bmode"] == f"{root}/img/p01_bmode.png;{root}/img/p00_ceus.png"
    assert manifest.frame.loc[2, "ceus"] == str(root / "img/p02_ceus.png")

    (bag / "broken.npy").write_bytes(b"not numpy")
    (root / "scan.nii").write_bytes(b"\0" * 400)
    rows[3]["ceus"] = "scan.nii"
    with pytest.raises(ManifestError) as err:
        load_manifest(write_csv(root / "m.csv", rows), BAG_TASK)
    messages = {(p.row, p.column): p.message for p in err.value.problems}
    assert (
        "broken.npy" in messages[(2, "bmode")] and "not a readable .npy" in messages[(2, "bmode")]
    )
    assert "not a NIfTI file" in messages[(5, "ceus")]


def test_image_format() -> None:
    assert image_format("a/B.PNG") == "pil"
    assert image_format("x.nii.gz") == "nifti"
    assert image_format("x.npy") == "npy"
    assert image_format("x.gif") is None
