"""Every reply a ClientApp sends holds only model arrays, scalar metrics and aggregate counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client import app as client_app
from models import create_model_for_task, get_task, norm_state_keys
from server.config import RunConfig
from simulation.synthetic import generate_dual_center

IMAGE_SIZE = 32
BINS = 10
ALLOWED_LISTS = {"summary-shape", "summary-hist", "summary-confusion"}


@pytest.fixture(scope="module")
def site_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("audit")
    return generate_dual_center(
        root,
        patients_per_site=(("a", 8), ("b", 6)),
        images_per_patient=(1, 2),
        image_size=IMAGE_SIZE,
        high_grade_fraction=0.4,
        seed=1,
    )


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    yield


# Every privacy / strategy option a reply can be produced under:
# (name, run-config overrides, keys the strategy adds to the round config, site node config)
OPTIONS = [
    ("plain", {}, {}, {}),
    ("local-dp", {"dp-safe-model": True}, {}, {"dp-epsilon": 5.0, "dp-delta": 1e-4}),
    ("central-dp", {"dp-safe-model": True}, {"clipping_norm": 1.0}, {}),
    ("fedbn", {}, {"keep-local-norm": True}, {}),
    ("fedprox", {}, {"proximal-mu": 0.1}, {}),
    ("float16-updates", {"update-dtype": "float16"}, {}, {}),
]


def _config(run: dict | None = None, added: dict | None = None) -> ConfigRecord:
    config = RunConfig.from_mapping(
        {
            "backbone": "test_efficientnet",
            "image-size": IMAGE_SIZE,
            "batch-size": 4,
            "score-bins": BINS,
            "learning-rate": 0.01,
            **(run or {}),
        }
    ).client_config()
    return ConfigRecord({**config, "server-round": 1, **(added or {})})


def _message(
    kind: str, arrays: ArrayRecord, run: dict | None = None, added: dict | None = None
) -> Message:
    msg = Message(
        content=RecordDict({"arrays": arrays, "config": _config(run, added)}),
        dst_node_id=7,
        message_type=kind,
    )
    msg.metadata.__dict__["_message_id"] = "m-1"
    return msg


def _context(manifest: Path, node: dict | None = None) -> Context:
    return Context(
        run_id=1,
        node_id=7,
        node_config={"data-path": str(manifest), "site-id": "a", **(node or {})},
        state=RecordDict(),
        run_config={},
    )


def _task():
    return get_task("rcc-grading").replace(backbone="test_efficientnet", image_size=IMAGE_SIZE)


def _global_arrays(*, dp_safe: bool = False) -> tuple[ArrayRecord, dict[str, torch.Tensor]]:
    state = create_model_for_task(_task(), dp_safe=dp_safe).state_dict()
    return ArrayRecord(state), state


def _all_strings(content: RecordDict) -> list[str]:
    out = []
    for record in content.config_records.values():
        out += [str(k) for k in record] + [str(v) for v in record.values()]
    for record in content.metric_records.values():
        out += [str(k) for k in record]
    return out


def _patient_ids(manifest: Path) -> set[str]:
    return set(pd.read_csv(manifest, dtype=str)["patient_id"])


def _check_metric_records(content: RecordDict, max_list: int) -> None:
    (metrics,) = content.metric_records.values()
    for key, value in metrics.items():
        if isinstance(value, list):
            assert key in ALLOWED_LISTS, f"unexpected list metric {key}"
            assert len(value) <= max_list
            assert all(isinstance(v, int) and v >= 0 for v in value)
        else:
            assert isinstance(value, int | float), key
    for record in content.config_records.values():
        assert set(record) == {"site-id"}


@pytest.mark.parametrize(("name", "run", "added", "node"), OPTIONS, ids=[o[0] for o in OPTIONS])
def test_train_reply_holds_only_model_arrays_and_scalars(
    site_manifest: Path, name: str, run: dict, added: dict, node: dict
) -> None:
    arrays, state = _global_arrays(dp_safe=bool(run.get("dp-safe-model")))
    # through the ClientApp object, so that its mods (central-DP clipping) run too
    reply = client_app.app(
        _message(MessageType.TRAIN, arrays, run, added), _context(site_manifest, node)
    )
    assert not reply.has_error(), reply.error
    content = reply.content
    (sent,) = content.array_records.values()
    expected = set(state)
    if name == "fedbn":  # normalisation layers stay at the site
        expected -= norm_state_keys(create_model_for_task(_task()))
    assert set(sent) == expected
    for key, array in sent.items():
        assert tuple(array.shape) == tuple(state[key].shape), key
        assert not (len(array.shape) >= 2 and array.shape[-2:] == (IMAGE_SIZE, IMAGE_SIZE)), key
    (metrics,) = content.metric_records.values()
    assert metrics["num-examples"] > 0
    _check_metric_records(content, max_list=0)
    assert not _patient_ids(site_manifest) & set(_all_strings(content))
    assert any(not torch.equal(sent.to_torch_state_dict()[k], state[k]) for k in state)


def test_evaluate_reply_holds_only_counts(site_manifest: Path) -> None:
    arrays, _ = _global_arrays()
    reply = client_app.evaluate(_message(MessageType.EVALUATE, arrays), _context(site_manifest))
    assert not reply.has_error(), reply.error
    content = reply.content
    assert not content.array_records
    _check_metric_records(content, max_list=2 * 2 * BINS)
    (metrics,) = content.metric_records.values()
    hist = np.asarray(metrics["summary-hist"]).reshape(2, 2, BINS)
    # every test row is counted once per scored class, and nothing else is sent
    assert hist.sum() == 2 * metrics["summary-n"] == 2 * metrics["num-examples"]
    assert not _patient_ids(site_manifest) & set(_all_strings(content))


def test_broken_site_replies_with_an_error_instead_of_crashing(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("patient_id,label,bmode,ceus\nP1,low,missing.png,missing2.png\n")
    arrays, _ = _global_arrays()
    context = _context(manifest)
    context.node_config["site-id"] = ""
    reply = client_app.train(_message(MessageType.TRAIN, arrays), context)
    assert reply.has_error()
    assert "missing.png" in reply.error.reason and "row 2" in reply.error.reason


def test_site_with_a_tiny_budget_declines_with_a_clear_reason(site_manifest: Path) -> None:
    arrays, _ = _global_arrays(dp_safe=True)
    reply = client_app.app(
        _message(MessageType.TRAIN, arrays, {"dp-safe-model": True}),
        _context(site_manifest, {"dp-epsilon": 0.001}),
    )
    assert reply.has_error()
    assert reply.error.code == client_app.PRIVACY_BUDGET_EXHAUSTED
    assert (
        "declines round 1" in reply.error.reason and "dp-max-noise-multiplier" in reply.error.reason
    )
