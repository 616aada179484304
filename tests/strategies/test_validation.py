"""Bad updates are rejected with a reason; the round goes on without them (issue 8, item 3)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.supercore.task_identity import TaskIdentity

from strategies.audit import AUDIT_FILE, AuditTrail, update_l2_norm
from strategies.factory import build_strategy
from strategies.validation import UpdateChecks, screen_updates, update_problems

GLOBAL = {"w": torch.zeros(4, 3), "b": torch.zeros(3), "steps": torch.tensor(5)}


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    yield


class _Grid:
    def __init__(self, node_ids: list[int]) -> None:
        self._ids = node_ids

    def get_node_ids(self) -> list[int]:
        return list(self._ids)


def _reply(node_id: int, content: RecordDict | Error) -> Message:
    ins = Message(
        content=RecordDict({"config": ConfigRecord({})}),
        dst_node_id=node_id,
        message_type=MessageType.TRAIN,
    )
    ins.metadata.__dict__["_message_id"] = f"m{node_id}"
    reply = Message(content, reply_to=ins)
    reply.metadata.__dict__["_src_node_id"] = node_id
    return reply


def _update(node_id: int, state: dict, n: int = 10) -> Message:
    return _reply(
        node_id,
        RecordDict(
            {
                "arrays": ArrayRecord(dict(state)),
                "metrics": MetricRecord({"num-examples": n, "train-loss": 0.1}),
                "site": ConfigRecord({"site-id": f"site-{node_id}"}),
            }
        ),
    )


def _good(shift: float = 0.1) -> dict:
    return {"w": GLOBAL["w"] + shift, "b": GLOBAL["b"] - shift, "steps": torch.tensor(9)}


def _global_np() -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in GLOBAL.items()}


def _with(**changes: object) -> dict:
    state = _good()
    for key, value in changes.items():
        if value is None:
            state.pop(key)
        else:
            state[key] = value
    return state


# (name, reply state, text the reason must contain)
BAD_UPDATES = [
    ("nan", _with(w=torch.full((4, 3), float("nan"))), "w: 12 NaN/Inf values"),
    ("inf", _with(b=torch.tensor([0.0, float("inf"), 0.0])), "b: 1 NaN/Inf value"),
    ("unknown key", _with(extra=torch.zeros(2)), "unknown keys 'extra'"),
    ("missing key", _with(b=None), "missing keys 'b'"),
    ("shape", _with(w=torch.zeros(3, 4)), "w: shape (3, 4), expected (4, 3)"),
    (
        "dtype",
        _with(w=torch.zeros(4, 3, dtype=torch.float64)),
        "w: dtype float64, expected float32",
    ),
    ("int dtype", _with(steps=torch.tensor(9.0)), "steps: dtype float32, expected int64"),
]


@pytest.mark.parametrize(("name", "state", "text"), BAD_UPDATES, ids=[c[0] for c in BAD_UPDATES])
def test_each_bad_update_is_named(name: str, state: dict, text: str) -> None:
    problems = update_problems(_global_np(), ArrayRecord(dict(state)))
    assert any(text in p for p in problems), problems


def test_a_good_update_and_float16_pass() -> None:
    assert update_problems(_global_np(), ArrayRecord(_good())) == []
    half = _with(w=(GLOBAL["w"] + 0.5).half())
    kept, rejected = screen_updates(_global_np(), [_update(1, half)], UpdateChecks())
    assert rejected == [] and len(kept) == 1
    w = kept[0].content["arrays"]["w"].numpy()
    assert w.dtype == np.float32 and np.allclose(w, 0.5)  # cast back for aggregation
    strict = UpdateChecks(allow_float16=False)
    _, rejected = screen_updates(_global_np(), [_update(1, half)], strict)
    assert "dtype float16" in rejected[0].reason


def test_an_implausible_norm_is_rejected_only_with_enough_sites() -> None:
    replies = [_update(i, _good(0.1 + 0.01 * i)) for i in range(1, 4)]
    scaled = _update(9, _good(50.0))
    kept, rejected = screen_updates(_global_np(), [*replies, scaled], UpdateChecks())
    assert [r.node_id for r in rejected] == [9]
    assert "x the round's median" in rejected[0].reason and len(kept) == 3
    # Two updates: the median is their mean, so nothing can be judged; off = 0.
    _, rejected = screen_updates(_global_np(), [replies[0], scaled], UpdateChecks())
    assert rejected == []
    _, rejected = screen_updates(_global_np(), [*replies, scaled], UpdateChecks(norm_factor=0))
    assert rejected == []
    with pytest.raises(ValueError, match="norm_factor must be 0"):
        UpdateChecks(norm_factor=0.5)


def test_the_round_goes_on_without_rejected_updates(tmp_path: Path) -> None:
    audit = AuditTrail(path=tmp_path / AUDIT_FILE)
    strategy = build_strategy("fedavg", min_train_nodes=1, min_available_nodes=1)
    strategy.audit = audit
    strategy.configure_train(1, ArrayRecord(GLOBAL), ConfigRecord({}), _Grid([1, 2, 3, 4]))
    replies = [
        _update(1, _good(0.2)),
        _update(2, _good(0.2)),
        _update(3, _with(w=torch.full((4, 3), float("nan")))),
    ]  # node 4 never answers
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None and np.allclose(arrays["w"].numpy(), 0.2)
    record = strategy.history.round(1)
    reasons = {f.node_id: f.reason for f in record.failures}
    assert reasons[3].startswith("update rejected: w: 12 NaN/Inf")
    assert reasons[4] == "no reply within the round timeout"
    assert sorted(record.train) == ["site-1", "site-2"]
    (line,) = (tmp_path / AUDIT_FILE).read_text().splitlines()
    entry = json.loads(line)
    assert entry["used"] == ["site-1", "site-2"] and entry["missing"] == [4]
    assert entry["rejected"][0]["node-id"] == 3 and "NaN" in entry["rejected"][0]["reason"]
    assert "site-3" not in entry["sites"]


def test_too_few_usable_updates_keep_the_global_model() -> None:
    strategy = build_strategy("fedavg", min_train_nodes=1, min_available_nodes=1)
    strategy.min_answers = 2
    strategy.configure_train(3, ArrayRecord(GLOBAL), ConfigRecord({}), _Grid([1, 2]))
    declined = _reply(2, Error(code=100, reason="site 2 cannot take part"))
    arrays, metrics = strategy.aggregate_train(3, [_update(1, _good()), declined])
    assert arrays is None and metrics is None
    record = strategy.history.round(3)
    assert "only 1 usable update (min-answers 2)" in record.note
    assert record.to_results()["note"] == record.note


def test_fedbn_updates_may_leave_arrays_out() -> None:
    strategy = build_strategy("fedbn", min_train_nodes=1, min_available_nodes=1)
    strategy.configure_train(1, ArrayRecord(GLOBAL), ConfigRecord({}), _Grid([1]))
    arrays, _ = strategy.aggregate_train(1, [_update(1, _with(b=None))])
    assert arrays is not None and strategy.history.round(1).failures == []


def test_the_superlinks_error_reply_is_attributed_to_the_unreachable_node() -> None:
    strategy = build_strategy("fedavg", min_train_nodes=1, min_available_nodes=1)
    messages = list(
        strategy.configure_train(1, ArrayRecord(GLOBAL), ConfigRecord({}), _Grid([7, 8]))
    )
    for msg in messages:  # what the grid does when it pushes them
        msg.metadata.__dict__["_message_id"] = f"id-{msg.metadata.dst_node_id}"
    unreachable = next(m for m in messages if m.metadata.dst_node_id == 8)
    error = Message(Error(code=5, reason="Node Unavailable"), reply_to=unreachable)
    error.metadata.__dict__["_src_node_id"] = 1  # the SuperLink answers for the node
    strategy.aggregate_train(1, [_update(7, _good()), error])
    (failure,) = strategy.history.round(1).failures
    assert (failure.node_id, failure.reason) == (8, "error code 5")  # not a fixed sentence


@pytest.mark.parametrize(
    ("name", "options"),
    [("fedmedian", {}), ("fedtrimmedavg", {"trim_beta": 0.25}), ("krum", {"krum_malicious": 1})],
)
def test_robust_strategies_resist_one_scaled_update(name: str, options: dict) -> None:
    strategy = build_strategy(name, min_train_nodes=1, min_available_nodes=1, **options)
    strategy.update_checks = None  # the aggregation alone must cope
    strategy.configure_train(1, ArrayRecord(GLOBAL), ConfigRecord({}), _Grid([1, 2, 3, 4]))
    replies = [_update(i, _good(0.1 + 0.01 * i)) for i in (1, 2, 3)] + [_update(4, _good(50.0))]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    assert 0.1 <= float(arrays["w"].numpy().mean()) <= 0.14, name
    mean, _ = build_strategy("fedavg", min_train_nodes=1, min_available_nodes=1).aggregate_train(
        1, [_update(i, _good(0.1 + 0.01 * i)) for i in (1, 2, 3)] + [_update(4, _good(50.0))]
    )
    assert float(mean["w"].numpy().mean()) > 10  # what a plain mean would have done


def test_float16_differences_are_judged_by_their_own_norm() -> None:
    def diff(shift: float, w: float = 0.0) -> dict:
        return {
            "w": (GLOBAL["w"] * 0 + shift + w).half(),
            "b": (GLOBAL["b"] * 0 + shift).half(),
            "steps": torch.tensor(9),
        }

    diffs = [_update(i, diff(0.01 * i)) for i in (1, 2, 3)] + [_update(4, diff(0.0, w=5.0))]
    shifted = {k: v + 100 if k != "steps" else v for k, v in _global_np().items()}
    _, rejected = screen_updates(shifted, diffs, UpdateChecks(differences=True))
    assert [r.node_id for r in rejected] == [4]  # the weights the global holds do not matter


@pytest.mark.parametrize("name", ["fedavg", "fedadam"])
def test_scalar_buffers_keep_their_shape_so_the_next_round_is_accepted(name: str) -> None:
    # BatchNorm's num_batches_tracked is a 0-d int64 array: the mean of the sites' values is a
    # float, cast back to int64, and must stay 0-d or every update of the next round is refused.
    strategy = build_strategy(name, min_train_nodes=1, min_available_nodes=1)
    strategy.configure_train(1, ArrayRecord(GLOBAL), ConfigRecord({}), _Grid([1, 2]))
    arrays, _ = strategy.aggregate_train(1, [_update(1, _good()), _update(2, _good())])
    assert arrays is not None
    assert arrays["steps"].numpy().shape == () and arrays["steps"].numpy().dtype == np.int64
    strategy.configure_train(2, arrays, ConfigRecord({}), _Grid([1, 2]))
    replies = [_update(1, _good(0.3)), _update(2, _good(0.3))]
    again, _ = strategy.aggregate_train(2, replies)
    assert again is not None
    assert not strategy.history.round(2).failures


def test_screening_hands_its_norms_to_the_audit() -> None:
    replies = [_update(i, _good(0.1 * i)) for i in range(1, 5)]
    scaled = _update(9, _good(60.0))
    norms: dict[int, float] = {}
    kept, _ = screen_updates(_global_np(), [*replies, scaled], UpdateChecks(), norms=norms)
    assert set(norms) == {id(m) for m in kept}  # the rejected update's norm is dropped
    expected = [update_l2_norm(_global_np(), m.content["arrays"]) for m in kept]
    assert [norms[id(m)] for m in kept] == pytest.approx(expected, rel=1e-6)
    audit = AuditTrail()
    audit.start_round(1, arrays=ArrayRecord(GLOBAL), asked=[m.metadata.src_node_id for m in kept])
    stale = {id(m): 123.0 + i for i, m in enumerate(kept)}  # the audit takes them as given
    record = audit.record_train(1, kept, norms=stale)
    assert [u.update_norm for u in record.updates] == [123.0 + i for i in range(len(kept))]
