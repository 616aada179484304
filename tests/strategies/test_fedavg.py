from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from models.metrics import ScoreSummary, summary_metrics
from strategies.fedavg import ClinicalFedAvg


@pytest.fixture(autouse=True)
def _task_identity():
    # Messages need a run identity; the Flower runtime sets it, a unit test must do it by hand.
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    yield


def _reply(node_id: int, content: RecordDict | Error) -> Message:
    ins = Message(
        content=RecordDict({"config": ConfigRecord({})}),
        dst_node_id=node_id,
        message_type=MessageType.EVALUATE,
    )
    ins.metadata.__dict__["_message_id"] = f"m{node_id}"
    reply = (
        Message(content, reply_to=ins)
        if isinstance(content, RecordDict)
        else Message(content, reply_to=ins)
    )
    reply.metadata.__dict__["_src_node_id"] = node_id
    return reply


def _site_summary(seed: int, n: int) -> ScoreSummary:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p1 = np.clip(0.3 * y + rng.uniform(0, 0.7, n), 0, 1)
    return ScoreSummary.from_scores(y, np.stack([1 - p1, p1], axis=1), n_bins=20, loss_sum=0.5 * n)


def _eval_content(site: str, summary: ScoreSummary) -> RecordDict:
    record = {"num-examples": summary.n, **summary.to_record()}
    return RecordDict({"metrics": MetricRecord(record), "site": ConfigRecord({"site-id": site})})


def test_global_metrics_come_from_summed_site_summaries():
    a, b = _site_summary(0, 80), _site_summary(1, 50)
    seen = []
    strategy = ClinicalFedAvg(on_round_end=seen.append)
    out = strategy.aggregate_evaluate(
        1, [_reply(11, _eval_content("center-a", a)), _reply(12, _eval_content("center-b", b))]
    )
    record = strategy.history.round(1)
    expected = summary_metrics(a + b)
    assert record.global_metrics["auc"] == pytest.approx(expected["auc"])
    assert record.global_metrics["n"] == 130
    assert record.sites["center-a"]["auc"] == pytest.approx(summary_metrics(a)["auc"])
    assert record.sites["center-b"]["n"] == 50
    assert out is not None and out["auc"] == pytest.approx(expected["auc"])
    assert seen == [record]
    assert ScoreSummary.from_record(record.global_summary) == a + b


def test_failed_and_malformed_sites_are_recorded_not_fatal():
    a = _site_summary(0, 60)
    broken = RecordDict(
        {
            "metrics": MetricRecord({"num-examples": 3, "summary-n": 3}),
            "site": ConfigRecord({"site-id": "x"}),
        }
    )
    strategy = ClinicalFedAvg()
    strategy.aggregate_evaluate(
        2,
        [
            _reply(11, _eval_content("center-a", a)),
            _reply(12, Error(code=100, reason="site center-b cannot take part: bad manifest")),
        ],
    )
    record = strategy.history.round(2)
    assert list(record.sites) == ["center-a"]
    assert record.failures[0].reason == "error code 100"  # never the site's own text
    assert record.global_metrics["n"] == 60
    strategy.aggregate_evaluate(3, [_reply(13, broken)])
    assert strategy.history.round(3).failures and not strategy.history.round(3).global_metrics
