"""Every reply a ClientApp sends holds only model arrays, scalar metrics and aggregate counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common import (
    Code,
    EvaluateIns,
    FitIns,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.supercore.task_identity import TaskIdentity

from client import app as client_app
from client import secagg_app
from models import create_model_for_task, get_task, norm_state_keys
from models.flat_record import unflatten_record
from models.refusals import refusal
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
    # every message-API privacy option at once: the site's own DP budget, the server asking
    # for DP too (the stricter applies), and central DP's clipping
    (
        "local-dp+central-dp",
        {"dp-safe-model": True, "dp-epsilon": 8.0, "dp-delta": 1e-4},
        {"clipping_norm": 1.0},
        {"dp-epsilon": 5.0, "dp-delta": 1e-4},
    ),
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
    assert reply.error.reason == refusal("data-invalid").reason
    assert "missing.png" not in reply.error.reason and "row 2" not in reply.error.reason


def test_site_with_a_tiny_budget_declines_with_a_clear_reason(site_manifest: Path) -> None:
    arrays, _ = _global_arrays(dp_safe=True)
    reply = client_app.app(
        _message(MessageType.TRAIN, arrays, {"dp-safe-model": True}),
        _context(site_manifest, {"dp-epsilon": 0.001}),
    )
    assert reply.has_error()
    assert reply.error.code == client_app.PRIVACY_BUDGET_EXHAUSTED
    assert reply.error.reason == refusal("budget-exhausted").reason  # the detail stays local


# Secure aggregation (legacy API): what the site's NumPyClient hands to Flower's secaggplus_mod,
# which quantises and masks the arrays before the reply leaves the site
# (tests/strategies/test_secagg.py checks, over a real SecAgg+ run, that the server receives
# masked vectors only). Scalars travel in clear, so they are audited here.
# counts and timings only; `skipped-files` counts unreadable files, never names them
SECAGG_SCALARS = {
    "site-id",
    "train-loss",
    "train-seconds",
    "train-steps",
    "secagg-clipped-values",
    "skipped-files",
}


def _secagg_config(run: dict) -> dict:
    return {**dict(_config(run)), "secagg-max-weight": 1000.0, "secagg-clipping-range": 8.0}


def _check_clear_scalars(metrics: dict, manifest: Path, *, allowed: set[str]) -> None:
    for key, value in metrics.items():
        assert key in allowed or key.startswith(("dp-", "summary-")), key
        assert isinstance(value, bool | int | float | str), key
    strings = {str(k) for k in metrics} | {str(v) for v in metrics.values()}
    assert not _patient_ids(manifest) & strings


SECAGG_OPTIONS = [
    ("secagg", {}, {}),
    ("secagg+local-dp", {"dp-safe-model": True}, {"dp-epsilon": 5.0, "dp-delta": 1e-4}),
]


@pytest.mark.parametrize(
    ("name", "run", "node"), SECAGG_OPTIONS, ids=[o[0] for o in SECAGG_OPTIONS]
)
def test_secagg_site_hands_only_its_update_and_scalars_to_the_masking(
    site_manifest: Path, name: str, run: dict, node: dict
) -> None:
    _, state = _global_arrays(dp_safe=bool(run.get("dp-safe-model")))
    client = secagg_app.SiteNumPyClient(_context(site_manifest, node)).to_client()
    params = ndarrays_to_parameters([t.numpy() for t in state.values()])
    res = client.fit(FitIns(params, _secagg_config(run)))
    assert res.status.code == Code.OK, res.status.message
    update = parameters_to_ndarrays(res.parameters)
    assert len(update) == len(state)
    for (key, ref), array in zip(state.items(), update, strict=True):
        assert array.shape == (tuple(ref.shape) or (1,)), key  # model-shaped, not data-shaped
        assert not (array.ndim >= 2 and array.shape[-2:] == (IMAGE_SIZE, IMAGE_SIZE)), key
    assert any(np.abs(a).max() > 0 for a in update)
    assert 0 < res.num_examples <= 1000
    _check_clear_scalars(res.metrics, site_manifest, allowed=SECAGG_SCALARS)
    if node:
        assert 0 < float(res.metrics["dp-epsilon-spent"]) <= node["dp-epsilon"] * 1.01

    evaluated = client.evaluate(EvaluateIns(params, _secagg_config(run)))
    assert evaluated.status.code == Code.OK, evaluated.status.message
    _check_clear_scalars(
        evaluated.metrics, site_manifest, allowed={"site-id", "eval-seconds", "skipped-files"}
    )
    record = unflatten_record(evaluated.metrics)
    hist = np.asarray(record["summary-hist"])
    assert hist.size <= 2 * 2 * BINS and np.all(hist >= 0)
    assert hist.sum() == 2 * evaluated.num_examples  # counts, once per scored class
