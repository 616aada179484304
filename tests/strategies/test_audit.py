"""The audit trail: who was asked, who answered, example counts, update norms, DP settings."""

from __future__ import annotations

import json
import math
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

from server.config import RunConfig
from strategies.audit import AUDIT_FILE, AuditTrail, dp_settings, update_l2_norm
from strategies.fedavg import ClinicalFedAvg

GLOBAL = {"w": torch.zeros(2, 3), "b": torch.ones(3), "steps": torch.tensor(5)}
LINE_KEYS = {"round", "time", "asked", "answered", "missing", "failed", "rejected", "used"}
LINE_KEYS |= {"sites", "dp"}
SITE_KEYS = {"node-id", "num-examples", "update-l2-norm", "dp", "skipped-files"}


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    yield


class _Grid:
    """The part of Flower's Grid that FedAvg.configure_train uses."""

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


def _train_content(site: str, state: dict[str, torch.Tensor], n: int, **metrics: float):
    return RecordDict(
        {
            "arrays": ArrayRecord(state),
            "metrics": MetricRecord({"num-examples": n, "train-loss": 0.3, **metrics}),
            "site": ConfigRecord({"site-id": site}),
        }
    )


def _round_replies() -> list[Message]:
    a = {"w": GLOBAL["w"] + 1, "b": GLOBAL["b"].clone(), "steps": torch.tensor(9)}
    b = {"w": GLOBAL["w"].clone(), "b": GLOBAL["b"] * 2, "steps": torch.tensor(7)}
    return [
        _reply(
            11, _train_content("center-a", a, 30, **{"dp-epsilon-spent": 1.5, "skipped-files": 2})
        ),
        _reply(
            12, _train_content("center-b", b, 10, **{"dp-epsilon-spent": 0.0, "skipped-files": 0})
        ),
        _reply(13, Error(code=100, reason="site center-c declined: budget spent")),
    ]


def _strategy(audit: AuditTrail | None) -> ClinicalFedAvg:
    strategy = ClinicalFedAvg(min_train_nodes=2, min_available_nodes=2)
    strategy.audit = audit
    return strategy


def test_update_norm() -> None:
    reply = ArrayRecord({"w": GLOBAL["w"] + 2, "b": GLOBAL["b"], "steps": torch.tensor(99)})
    assert update_l2_norm(ArrayRecord(GLOBAL), reply) == pytest.approx(math.sqrt(6 * 4))
    fedbn_like = ArrayRecord({"w": GLOBAL["w"] - 1})  # local layers are not sent
    assert update_l2_norm(ArrayRecord(GLOBAL), fedbn_like) == pytest.approx(math.sqrt(6))
    as_numpy = {k: v.numpy() for k, v in GLOBAL.items()}
    assert update_l2_norm(as_numpy, reply) == pytest.approx(math.sqrt(24))
    with pytest.raises(ValueError, match="has shape"):
        update_l2_norm(ArrayRecord(GLOBAL), ArrayRecord({"w": torch.zeros(3, 2)}))
    with pytest.raises(ValueError, match="not in the global model"):
        update_l2_norm(ArrayRecord(GLOBAL), ArrayRecord({"extra": torch.zeros(1)}))


def test_strategy_writes_one_line_per_round(tmp_path: Path) -> None:
    path = tmp_path / "out" / AUDIT_FILE
    settings = {"dp-epsilon": 0.0, "central-dp-noise-multiplier": 0.5}
    audit = AuditTrail(path=path, settings=settings)
    strategy = _strategy(audit)
    messages = list(strategy.configure_train(1, ArrayRecord(GLOBAL), ConfigRecord({}),
                                             _Grid([11, 12, 13, 14])))  # fmt: skip
    assert sorted(m.metadata.dst_node_id for m in messages) == [11, 12, 13, 14]
    arrays, _ = strategy.aggregate_train(1, _round_replies())

    lines = path.read_text().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert set(entry) == LINE_KEYS
    assert entry["round"] == 1 and entry["time"].endswith("Z")
    assert sorted(entry["asked"]) == [11, 12, 13, 14]
    assert entry["answered"] == ["center-a", "center-b"]
    assert entry["missing"] == [14]
    assert entry["failed"] == [
        {"node-id": 13, "site": "13", "error-code": 100, "reason": "error code 100"}
    ]  # the site's own text is not a fixed sentence: only its code is kept
    site_a, site_b = entry["sites"]["center-a"], entry["sites"]["center-b"]
    assert set(site_a) == SITE_KEYS
    assert site_a["num-examples"] == 30 and site_b["num-examples"] == 10
    assert site_a["update-l2-norm"] == pytest.approx(math.sqrt(6))  # integer arrays skipped
    assert site_b["update-l2-norm"] == pytest.approx(math.sqrt(3))
    assert site_a["dp"] == {"dp-epsilon-spent": 1.5} and site_b["dp"] == {"dp-epsilon-spent": 0.0}
    assert site_a["skipped-files"] == 2 and site_b["skipped-files"] == 0
    assert "train-loss" not in lines[0]  # only privacy scalars are copied from the metrics
    assert entry["dp"] == settings

    # The hook changes nothing about aggregation.
    plain = _strategy(None)
    plain.configure_train(1, ArrayRecord(GLOBAL), ConfigRecord({}), _Grid([11, 12, 13, 14]))
    expected, _ = plain.aggregate_train(1, _round_replies())
    assert arrays is not None and expected is not None
    for key in ("w", "b"):
        np.testing.assert_allclose(arrays[key].numpy(), expected[key].numpy())

    strategy.configure_train(2, arrays, ConfigRecord({}), _Grid([11, 12]))
    declined = _reply(12, Error(code=101, reason="budget spent"))
    strategy.aggregate_train(2, [_round_replies()[0], declined])
    lines = path.read_text().splitlines()
    assert [json.loads(x)["round"] for x in lines] == [1, 2]
    assert json.loads(lines[1])["failed"][0]["site"] == "center-b"  # named from round 1
    assert [r.round for r in audit.rounds] == [1, 2]


def test_a_new_trail_starts_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / AUDIT_FILE
    path.write_text('{"round": 1}\n')
    AuditTrail(path=path)
    assert path.read_text() == ""


def test_dp_settings_from_the_run_config() -> None:
    settings = dp_settings(RunConfig().to_dict())
    assert "dp-epsilon" in settings and "central-dp-noise-multiplier" in settings
    assert all(k.startswith(("dp-", "central-dp", "secagg")) for k in settings)
    assert dp_settings({"learning-rate": 0.1, "secagg-num-shares": 3}) == {"secagg-num-shares": 3}
