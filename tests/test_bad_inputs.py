"""Every kind of bad input a site or a coordinator can give gets the project's own error, and
the message names the problem: the file, the row, the column or setting, and what is expected.

One table (``CASES``) of bad manifests, bad site data and bad run configurations; the legal but
odd data that only warns (``WARNINGS``); the training-time skip of a file that breaks after
the check; and a hypothesis fuzz test of the manifest loader.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from client.dataset import ManifestDataset, make_loader
from client.manifest import ManifestError, load_manifest
from client.site import SiteConfigError, SiteSettings
from client.train import TrainConfig, train_local
from models import UnknownOptionError, create_model
from models.tasks import get_task
from server.config import RunConfig, RunConfigError
from simulation.runner import SimulationOptions, simulate
from simulation.scenario import load_scenario
from tests.client._data import make_site, small_task, write_csv, write_png

TASK = small_task()
FEATURE_TASK = TASK.replace(features=("age", "sex"), categories={"sex": ["f", "m"]})
LABELS = ("low", "high") * 3  # P00-P05, rows 2-7

Rows = list[dict[str, str]]


# -- building the bad inputs -------------------------------------------------------------------


def _site(root: Path, **kwargs: object) -> Rows:
    return make_site(root, labels=LABELS, **kwargs)  # type: ignore[arg-type]


def _csv_text(root: Path, rows: Rows | None = None) -> str:
    return write_csv(root / "m.csv", rows or _site(root)).read_text()


def _text(edit: Callable[[str], str]) -> Callable[[Path], Path]:
    """A manifest whose CSV text is the valid one passed through ``edit``."""

    def make(root: Path) -> Path:
        path = root / "m.csv"
        path.write_text(edit(_csv_text(root)), encoding="utf-8")
        return path

    return make


def _bytes(edit: Callable[[str], bytes]) -> Callable[[Path], Path]:
    def make(root: Path) -> Path:
        path = root / "m.csv"
        path.write_bytes(edit(_csv_text(root)))
        return path

    return make


def _rows(edit: Callable[[Path, Rows], Rows | None]) -> Callable[[Path], Path]:
    """A manifest written from the valid rows after ``edit(root, rows)`` (in place or returned)."""

    def make(root: Path) -> Path:
        rows = _site(root, extra={"age": ["50"] * 6, "sex": ["f", "m"] * 3})
        rows = edit(root, rows) or rows
        header = list(dict.fromkeys(k for r in rows for k in r))
        return write_csv(root / "m.csv", rows, header)

    return make


def _set(**cells: tuple[int, str]) -> Callable[[Path, Rows], None]:
    """Set ``column=(row index, value)`` cells."""

    def edit(root: Path, rows: Rows) -> None:
        for column, (index, value) in cells.items():
            rows[index][column] = value

    return edit


def _rename(old: str, new: str) -> Callable[[Path, Rows], Rows]:
    return lambda root, rows: [{(new if k == old else k): v for k, v in r.items()} for r in rows]


def _truncate_first_bmode(root: Path, rows: Rows) -> None:
    png = root / rows[0]["bmode"]
    data = png.read_bytes()
    png.write_bytes(data[: len(data) // 2])


def _text_as_png(root: Path, rows: Rows) -> None:
    (root / rows[1]["ceus"]).write_text("<html>not an image</html>")


def _gif(root: Path, rows: Rows) -> None:
    (root / "img/a.gif").write_bytes(b"GIF89a")
    rows[0]["bmode"] = "img/a.gif"


def _splits(*values: str) -> Callable[[Path, Rows], None]:
    def edit(root: Path, rows: Rows) -> None:
        for row, value in zip(rows, values, strict=True):
            row["split"] = value

    return edit


def _sites(root: Path, rows: Rows) -> None:
    for i, row in enumerate(rows):
        row["site"] = "north" if i < 3 else "south"


def _patient_in_two_splits(root: Path, rows: Rows) -> None:
    _splits("train", "train", "train", "test", "val", "test")(root, rows)
    rows[3]["patient_id"] = "P00"  # row 5 (test) is the same patient as row 2 (train)


def _bag(root: Path, rows: Rows) -> None:
    for row in rows:
        row["split"] = "train"
    rows[0]["bmode"] = f"{rows[0]['bmode']}; {rows[1]['bmode']}"


def _one_patient(root: Path, rows: Rows) -> None:
    for row in rows:
        row["patient_id"] = "P00"


# -- the table ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One bad input: ``run(tmp_path)`` must raise ``error`` whose text holds every fragment."""

    name: str
    run: Callable[[Path], object]
    error: type[Exception]
    fragments: tuple[str, ...]


def _manifest(
    name: str,
    make: Callable[[Path], Path],
    *fragments: str,
    task: object = None,
    **kwargs: object,
) -> Case:
    def run(root: Path) -> object:
        return load_manifest(make(root), task or FEATURE_TASK, **kwargs)  # type: ignore[arg-type]

    return Case(name, run, ManifestError, ("m.csv", *fragments))


def _config(name: str, raw: dict[str, object], *fragments: str) -> Case:
    return Case(name, lambda root: RunConfig.from_mapping(raw), RunConfigError, fragments)


CASES: list[Case] = [
    # the file itself
    Case(
        "manifest-not-found",
        lambda root: load_manifest(root / "nope.csv", TASK),
        ManifestError,
        ("manifest file not found", "nope.csv"),
    ),
    Case(
        "manifest-is-a-folder",
        lambda root: load_manifest(root, TASK),
        ManifestError,
        ("is a folder", "give the manifest CSV file"),
    ),
    _manifest("empty-file", _text(lambda t: ""), "the file is empty", "header"),
    _manifest("only-a-header", _text(lambda t: t.splitlines()[0] + "\n"), "no data rows"),
    _manifest(
        "unclosed-quote",
        _text(lambda t: t.replace("P01", '"P01', 1)),
        "row 3",
        "double quote",
        "never closed",
    ),
    _manifest(
        "extra-cell",
        _text(lambda t: t.replace("P02,", "P02,oops,", 1)),
        "row 4",
        "5 cells but the header has 4",
        "double quotes",
    ),
    _manifest(
        "semicolon-delimiter",
        _text(lambda t: t.replace(",", ";")),
        "row 1",
        "semicolon-separated",
        "comma-separated",
    ),
    _manifest("tab-delimiter", _text(lambda t: t.replace(",", "\t")), "tab-separated"),
    _manifest("binary-file", _bytes(lambda t: b"\x00\x01\x02" + t.encode()), "binary file"),
    _manifest(
        "excel-workbook",
        _bytes(lambda t: b"PK\x03\x04" + t.encode()),
        "ZIP archive",
        ".xlsx",
        "CSV UTF-8",
    ),
    _manifest("utf16-text", _bytes(lambda t: t.encode("utf-16")), "UTF-16", "CSV UTF-8"),
    _manifest(
        "latin1-text",
        _bytes(lambda t: t.replace("P01", "Pé1").encode("latin-1")),
        "row 3",
        "not UTF-8",
        "0xe9",
    ),
    # columns
    _manifest(
        "missing-column",
        _rows(_rename("ceus", "CEUS")),
        "column 'ceus'",
        "modality column 'ceus' is missing",
        "Did you mean 'CEUS'",
    ),
    _manifest(
        "duplicate-column",
        _text(lambda t: t.replace("label,", "label,label,", 1).replace("low,", "low,low,")),
        "column 'label'",
        "appears 2 times (columns 2, 3)",
    ),
    _manifest(
        "reserved-column",
        _rows(lambda root, rows: [{**r, "row": "1"} for r in rows]),
        "column 'row'",
        "is reserved",
    ),
    # cells
    _manifest(
        "image-not-found",
        _rows(_set(bmode=(0, "img/nowhere.png"))),
        "row 2",
        "column 'bmode'",
        "file not found: 'img/nowhere.png'",
    ),
    _manifest(
        "truncated-png",
        _rows(_truncate_first_bmode),
        "row 2",
        "column 'bmode'",
        "corrupt or truncated image",
    ),
    _manifest(
        "not-an-image",
        _rows(_text_as_png),
        "row 3",
        "column 'ceus'",
        "not an image",
    ),
    _manifest(
        "home-of-unknown-user",  # found by the fuzz test: expanduser() raised RuntimeError
        _rows(_set(ceus=(1, "~no_such_user_x/a.png"))),
        "row 3",
        "column 'ceus'",
        "file not found: '~no_such_user_x/a.png'",
    ),
    _manifest(
        "path-too-long",
        _rows(_set(ceus=(2, "x" * 300 + ".png"))),
        "row 4",
        "column 'ceus'",
        "cannot use the path",
    ),
    _manifest("unsupported-suffix", _rows(_gif), "row 2", "unsupported image type 'img/a.gif'"),
    _manifest(
        "every-modality-empty",
        _rows(_set(bmode=(2, ""), ceus=(2, ""))),
        "row 4",
        "every modality is empty",
    ),
    _manifest(
        "wrong-label-name",
        _rows(_set(label=(1, "hgh"))),
        "row 3",
        "column 'label'",
        "unknown label 'hgh'",
        "'low', 'high'",
        "Did you mean 'high'",
    ),
    _manifest(
        "label-index-out-of-range",
        _rows(_set(label=(1, "2"))),
        "row 3",
        "unknown label '2'",
        "index 0-1",
    ),
    _manifest("empty-label", _rows(_set(label=(3, ""))), "row 5", "label is empty"),
    _manifest("empty-patient-id", _rows(_set(patient_id=(4, ""))), "row 6", "patient_id is empty"),
    _manifest(
        "non-numeric-feature",
        _rows(_set(age=(0, "old"))),
        "row 2",
        "column 'age'",
        "numeric feature",
        "'old' is not a number",
    ),
    _manifest(
        "unknown-category",
        _rows(_set(sex=(2, "x"))),
        "row 4",
        "column 'sex'",
        "unknown level 'x'",
        "'f', 'm'",
    ),
    _manifest(
        "invalid-split",
        _rows(_splits("train", "train", "tst", "test", "val", "test")),
        "row 4",
        "column 'split'",
        "invalid split 'tst'",
        "Did you mean 'test'",
    ),
    _manifest(
        "patient-in-two-splits",
        _rows(_patient_in_two_splits),
        "column 'split'",
        "patient 'P00' is in more than one split",
        "train: row 2",
        "test: row 5",
    ),
    _manifest(
        "unknown-site",
        _rows(_sites),
        "column 'site'",
        "unknown site 'nort'",
        "Did you mean 'north'",
        site="nort",
    ),
    _manifest(
        "one-patient-cannot-be-split",
        _rows(_one_patient),
        "column 'split'",
        "cannot split 1 patient(s) into train and test",
    ),
    _manifest(
        "bag-in-a-single-image-column",
        _rows(_bag),
        "row 2",
        "column 'bmode'",
        "holds 2 ';'-separated paths",
        "one image per row",
    ),
    # run configuration
    _config("unknown-strategy", {"strategy": "fedavgg"}, "unknown strategy 'fedavgg'", "'fedavg'"),
    _config("unknown-task", {"task": "rcc-gradin"}, "unknown task", "Did you mean 'rcc-grading'"),
    _config(
        "unknown-backbone",
        {"backbone": "resnet181"},
        "unknown backbone 'resnet181'",
        "Did you mean",
    ),
    _config(
        "misspelt-key",
        {"num-server-round": 3},
        "unknown run config key 'num-server-round'",
        "Did you mean 'num-server-rounds'",
    ),
    _config("rounds-zero", {"num-server-rounds": 0}, "num-server-rounds must be >= 1, got 0"),
    _config("fraction-above-one", {"fraction-train": 1.5}, "fraction-train must be in (0, 1]"),
    _config("learning-rate-zero", {"learning-rate": 0}, "learning-rate must be > 0, got 0"),
    _config("epsilon-negative", {"dp-epsilon": -1}, "dp-epsilon must be >= 0", "got -1"),
    _config("delta-one", {"dp-delta": 1.0}, "dp-delta must be in (0, 1), got 1.0"),
    _config("wrong-type", {"batch-size": "many"}, "batch-size: expected int, got 'many'"),
    _config(
        "fedbn-with-central-dp",
        {"strategy": "fedbn", "central-dp-noise-multiplier": 1.0},
        "strategy fedbn cannot run with central DP",
    ),
    _config(
        "secagg-with-fedbn",
        {"strategy": "fedbn", "secagg": True},
        "secagg runs only with strategy fedavg, got 'fedbn'",
    ),
    _config(
        "fedprox-with-local-dp",
        {"strategy": "fedprox", "dp-epsilon": 2.0},
        "strategy fedprox cannot run with local DP",
        "per-sample",
    ),
    # names elsewhere, and the site's own configuration
    Case(
        "unknown-model",
        lambda root: create_model("mufnett", num_classes=2, backbone="resnet10t"),
        UnknownOptionError,
        ("unknown model 'mufnett'", "Did you mean 'mufnet'"),
    ),
    Case(
        "unknown-scenario",
        lambda root: load_scenario("dual-centre"),
        UnknownOptionError,
        ("unknown scenario 'dual-centre'", "Did you mean 'dual-center'"),
    ),
    Case(
        "unknown-method",
        lambda root: simulate(
            load_scenario("dual-center"), SimulationOptions(out_dir=root, methods=("fedbnn",))
        ),
        UnknownOptionError,
        ("unknown method 'fedbnn'", "Did you mean 'fedbn'"),
    ),
    Case(
        "simulation-manifest-without-site-column",
        lambda root: simulate(
            load_scenario("dual-center"),
            SimulationOptions(out_dir=root / "out", manifest=_rows(lambda r, rows: None)(root)),
        ),
        ManifestError,
        ("m.csv", "column 'site'", "a simulation needs a 'site' column"),
    ),
    Case(
        "simulation-min-nodes-above-sites",
        lambda root: simulate(
            load_scenario("dual-center"),
            SimulationOptions(
                out_dir=root / "out",
                manifest=_rows(_sites)(root),
                overrides={"min-train-nodes": 3},
            ),
        ),
        RunConfigError,
        ("min-train-nodes is 3 but the federation has 2 site(s) (north, south)", "at most 2"),
    ),
    Case(
        "site-without-data-path",
        lambda root: SiteSettings.from_node_config({"site-id": "a"}),
        SiteConfigError,
        ("no 'data-path'", "--node-config"),
    ),
    Case(
        "site-data-path-missing",
        lambda root: SiteSettings.from_node_config({"data-path": str(root / "gone.csv")}),
        SiteConfigError,
        ("data-path", "gone.csv", "is not a file"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gets_a_clear_error(tmp_path: Path, case: Case) -> None:
    with pytest.raises(case.error) as info:
        case.run(tmp_path)
    text = str(info.value)
    missing = [f for f in case.fragments if f not in text]
    assert not missing, f"{missing} not in:\n{text}"


def test_the_table_covers_at_least_twenty_kinds() -> None:
    manifests = [c for c in CASES if c.error is ManifestError]
    configs = [c for c in CASES if c.error is RunConfigError]
    assert len(CASES) >= 40 and len(manifests) >= 20 and len(configs) >= 10
    assert all(issubclass(c.error, ValueError) for c in CASES)  # one tree, rooted in ValueError


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    make = _rows(_set(label=(0, "hgh"), age=(1, "old"), bmode=(2, "img/nowhere.png")))
    with pytest.raises(ManifestError) as info:
        load_manifest(make(tmp_path), FEATURE_TASK)
    assert [(p.row, p.column) for p in info.value.problems] == [
        (2, "label"),
        (3, "age"),
        (4, "bmode"),
    ]
    assert "3 problems" in str(info.value)


# -- legal but odd data: a warning, not an error ----------------------------------------------

WARNINGS = [
    (
        "empty-test-split",
        _rows(_splits("train", "train", "train", "train", "val", "val")),
        "split",
        ("the test split has no rows", "split=test"),
    ),
    (
        "evaluation-only-site",
        _rows(_splits(*["test"] * 6)),
        "split",
        ("the train split has no rows", "can only evaluate"),
    ),
    (
        "single-class-site",
        _rows(lambda root, rows: [{**r, "label": "low"} for r in rows]),
        "label",
        ("every row has label 'low'", "single-class site"),
    ),
    (
        "mixed-image-sizes",
        _rows(lambda root, rows: write_png(root / rows[2]["bmode"], height=24, width=20) and None),
        "bmode",
        ("images come in 2 sizes", "16x16 in 5 rows", "20x24 in 1 row, e.g. row 4", "resized"),
    ),
    (
        "mixed-channels",
        _rows(lambda root, rows: write_png(root / rows[1]["ceus"], mode="RGB") and None),
        "ceus",
        ("images mix channel counts", "3-channel (RGB) in 1 row, e.g. row 3", "converted"),
    ),
]


@pytest.mark.parametrize(
    ("make", "column", "fragments"), [w[1:] for w in WARNINGS], ids=[w[0] for w in WARNINGS]
)
def test_odd_data_loads_with_a_warning(
    tmp_path: Path, make: Callable[[Path], Path], column: str, fragments: tuple[str, ...]
) -> None:
    manifest = load_manifest(make(tmp_path), FEATURE_TASK)
    texts = [str(w) for w in manifest.warnings if w.column == column]
    assert any(all(f in t for f in fragments) for t in texts), manifest.warnings


def test_a_valid_site_has_no_warnings(tmp_path: Path) -> None:
    assert load_manifest(_rows(lambda root, rows: None)(tmp_path), FEATURE_TASK).warnings == ()


# -- training time: a file that breaks after the check is skipped and counted -----------------


class _TwoInputNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2 * 3 * 16 * 16, 2)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([a.flatten(1), b.flatten(1)], dim=1))


def test_training_skips_and_counts_unreadable_files(tmp_path: Path) -> None:
    rows = _site(tmp_path)
    for row in rows:
        row["split"] = "train"
    manifest = load_manifest(write_csv(tmp_path / "m.csv", rows), TASK)
    (tmp_path / rows[0]["bmode"]).write_bytes(b"broken")  # row 2: one of two images lost
    (tmp_path / rows[1]["bmode"]).unlink()  # row 3: both lost -> the row is dropped
    (tmp_path / rows[1]["ceus"]).write_bytes(b"")

    loader = make_loader(manifest, "train", batch_size=6, train=False)
    (bmode, ceus, labels) = next(iter(loader))
    assert labels.tolist() == [0, 0, 1, 0, 1]  # row 3 (high) left out
    assert torch.count_nonzero(bmode[0]) == 0 and torch.count_nonzero(ceus[0]) > 0
    dataset = loader.dataset
    assert dataset.skipped_files == 3 and dataset.skipped_rows == 1

    train_loader = make_loader(manifest, "train", batch_size=2, train=True, seed=1)
    result = train_local(
        _TwoInputNet(), train_loader, config=TrainConfig(learning_rate=0.01), class_counts=[3, 3]
    )
    assert result.skipped_files == 3
    assert result.num_examples == 5  # the dropped row is not counted as trained on


def test_a_bag_loses_only_its_unreadable_member(tmp_path: Path) -> None:
    task = TASK.replace(bags=("bmode",))
    rows = _site(tmp_path)[:2]
    for k in range(3):
        write_png(tmp_path / "tem" / f"f{k}.png", seed=k)
    rows[0]["bmode"] = "tem/f0.png; tem/f1.png; tem/f2.png"
    for row in rows:
        row["split"] = "test"
    manifest = load_manifest(write_csv(tmp_path / "m.csv", rows), task)
    (tmp_path / "tem/f1.png").write_bytes(b"\x89PNG broken")
    loader = make_loader(manifest, "test", batch_size=2, train=False)
    bags, mask, ceus, labels = next(iter(loader))
    assert mask.tolist() == [[True, True], [True, False]]  # f0 and f2 left of three; one
    assert labels.tolist() == [0, 1] and loader.dataset.skipped_files == 1
    alone = ManifestDataset(manifest, "test", train=False)[0][0]  # (2, C, S, S): f0, f2
    assert torch.equal(bags[0], alone)


def test_site_reply_reports_skipped_files(tmp_path: Path) -> None:
    """Through the ClientApp: the train reply's metrics carry ``skipped-files``."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from client import app as client_app
    from client.site import RoundSettings, get_session
    from models import create_model_for_task

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    rows = _site(tmp_path)
    path = write_csv(tmp_path / "m.csv", rows)
    config = RunConfig.from_mapping(
        {
            "backbone": "test_efficientnet",
            "image-size": 32,
            "batch-size": 4,
            "score-bins": 10,
            "class-balanced-sampling": False,  # every train row is read once
        }
    ).client_config()
    record = ConfigRecord({**config, "server-round": 1})
    task = get_task("rcc-grading").replace(backbone="test_efficientnet", image_size=32)
    arrays = ArrayRecord(create_model_for_task(task).state_dict())
    msg = Message(
        content=RecordDict({"arrays": arrays, "config": record}),
        dst_node_id=7,
        message_type=MessageType.TRAIN,
    )
    msg.metadata.__dict__["_message_id"] = "m-1"
    node = {"data-path": str(path), "site-id": "a"}
    context = Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={})
    session = get_session(SiteSettings.from_node_config(node), RoundSettings.from_config(record))
    for row in session.manifest.rows("train").itertuples():
        Path(row.bmode).write_bytes(b"gone bad after the check")  # every train bmode image
    reply = client_app.train(msg, context)
    assert not reply.has_error(), reply.error
    (metrics,) = reply.content.metric_records.values()
    assert metrics["skipped-files"] == len(session.manifest.rows("train")) > 0
    assert metrics["num-examples"] > 0  # the rows still train on their ceus images


# -- fuzz: the manifest loader raises nothing but ManifestError --------------------------------

_CELLS = st.one_of(
    st.sampled_from(["", "low", "high", "1", "0", "2", "P1", "img/a.png", "a.png;b.png", "nan"]),
    st.text(alphabet=string.printable + "éß\u00a0", max_size=12),
)
_HEADERS = st.lists(
    st.sampled_from(
        ["patient_id", "label", "bmode", "ceus", "split", "site", "row", "age", "sex", "", "x"]
    ),
    min_size=0,
    max_size=7,
)


_VALID_COLUMNS = ("patient_id", "label", "bmode", "ceus", "age", "sex")
_GOOD_CELLS = {
    "patient_id": ["P1", "P2", "P3", "P4", "P5"],
    "label": ["low", "high", "0", "1"],
    "bmode": ["img/a.png", "b.png", "img"],  # "img" is a folder: a bag
    "ceus": ["img/a.png", "b.png", ""],
    "age": ["50", "61.5", "", "NA"],
    "sex": ["f", "m", "M", ""],
}
_BAD_CELLS = ["", "High", "2", "missing.png", "old", "1e999", "x", "~", '"', "a,b"]


@st.composite
def _csv_documents(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["manifest", "manifest", "table", "text", "bytes"]))
    if kind == "manifest":  # the right columns: exercises the row checks, splits, warnings
        rows = [list(_VALID_COLUMNS)]
        for _ in range(draw(st.integers(1, 10))):
            rows.append([draw(st.sampled_from(_GOOD_CELLS[c])) for c in _VALID_COLUMNS])
        if draw(st.booleans()):  # spoil one cell
            row = draw(st.integers(0, len(rows) - 1))
            rows[row][draw(st.integers(0, len(_VALID_COLUMNS) - 1))] = draw(
                st.sampled_from(_BAD_CELLS)
            )
        return ("\n".join(",".join(r) for r in rows) + "\n").encode()
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "text":
        return draw(st.text(max_size=200)).encode("utf-8")
    header = draw(_HEADERS)
    lines = [",".join(header)]
    for _ in range(draw(st.integers(0, 6))):
        width = draw(st.integers(0, len(header) + 2))
        cells = [draw(_CELLS) for _ in range(width)]
        if draw(st.booleans()):
            cells = [f'"{c}"' if "," in c else c for c in cells]
        lines.append(draw(st.sampled_from([",", ";", "\t"])).join(cells))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    return newline.join(lines).encode(draw(st.sampled_from(["utf-8", "utf-8-sig", "latin-1"])))


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    write_png(root / "img/a.png")
    write_png(root / "b.png", height=20)
    return root


@pytest.mark.slow
@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(document=_csv_documents(), site=st.sampled_from([None, "north", "P1"]))
def test_fuzz_manifest_loader_raises_only_manifest_errors(
    fuzz_root: Path, document: bytes, site: str | None
) -> None:
    path = fuzz_root / "m.csv"
    path.write_bytes(document)
    try:
        manifest = load_manifest(path, FEATURE_TASK, site=site)
    except ManifestError as err:
        assert err.problems, "a ManifestError lists at least one problem"
        assert all(str(p) for p in err.problems)
    else:  # a document that passes is a real, split manifest
        assert len(manifest.frame) > 0
        assert set(manifest.frame["split"]) <= {"train", "val", "test"}


def test_run_config_lists_every_problem_at_once() -> None:
    raw = {"strategy": "fedavgg", "num-server-round": 2, "dp-delta": 2.0}
    with pytest.raises(RunConfigError) as info:
        RunConfig.from_mapping(raw)
    text = str(info.value)
    assert "unknown strategy 'fedavgg'" in text and "'num-server-rounds'" in text
    assert "dp-delta must be in (0, 1), got 2.0" in text
