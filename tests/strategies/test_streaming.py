from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from flwr.supercore.task_identity import TaskIdentity

from strategies.factory import STRATEGIES
from strategies.streaming import RunningMean, StreamingFedAvg, array_view, fedavg_arrays


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    yield


def _state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": torch.randn(8, 3, 3, 3, generator=g),
        "fc.weight": torch.randn(5, 17, generator=g) * 10,
        "fc.bias": torch.randn(5, generator=g),
        "bn.num_batches_tracked": torch.tensor(seed * 3 + 1),
    }


def _content(seed: int, n: int) -> RecordDict:
    return RecordDict(
        {
            "arrays": ArrayRecord(_state(seed)),
            "metrics": MetricRecord({"num-examples": n, "train-loss": 0.1 * seed}),
        }
    )


SITE_SIZES = [[7], [3, 11], [5, 1, 40, 2, 9, 13]]


@pytest.mark.parametrize("sizes", SITE_SIZES)
def test_fedavg_arrays_equal_flowers_bit_for_bit(sizes):
    contents = [_content(i, n) for i, n in enumerate(sizes)]
    ours = fedavg_arrays(contents, "num-examples")
    theirs = aggregate_arrayrecords(contents, "num-examples")
    assert list(ours.keys()) == list(theirs.keys())
    for key in theirs:
        a, b = ours[key].numpy(), theirs[key].numpy()
        assert a.dtype == b.dtype and a.shape == b.shape, key
        np.testing.assert_array_equal(a, b, err_msg=key)
        assert ours[key].data == theirs[key].data, key  # the same .npy payload


@pytest.mark.parametrize("sizes", SITE_SIZES)
def test_streamed_mean_without_total_agrees_with_flower(sizes):
    contents = [_content(i, n) for i, n in enumerate(sizes)]
    mean = RunningMean()
    for content, n in zip(contents, sizes, strict=True):
        mean.add(content["arrays"], n)
    ours = mean.result()
    theirs = aggregate_arrayrecords(contents, "num-examples")
    for key in theirs:
        np.testing.assert_allclose(ours[key].numpy(), theirs[key].numpy(), rtol=2e-6, atol=1e-6)
    # and the expected mean, computed independently in float64
    expected = sum(n * _state(i)["fc.weight"].double() for i, n in enumerate(sizes)) / sum(sizes)
    np.testing.assert_allclose(ours["fc.weight"].numpy(), expected.numpy(), rtol=1e-5)


def test_float16_updates_are_summed_in_float32():
    states = [{k: v.half() for k, v in _state(i).items() if v.is_floating_point()} for i in (0, 1)]
    mean = RunningMean()
    for state, n in zip(states, (2, 6), strict=True):
        mean.add(ArrayRecord(state), n)
    out = mean.result()["fc.weight"].numpy()
    assert out.dtype == np.float32
    expected = (2 * states[0]["fc.weight"].float() + 6 * states[1]["fc.weight"].float()) / 8
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-6)


def test_array_view_reads_the_message_bytes_without_copying():
    record = ArrayRecord(_state(3))
    view = array_view(record["fc.weight"])
    assert not view.flags.writeable and not view.flags.owndata
    np.testing.assert_array_equal(view, record["fc.weight"].numpy())


def test_mismatched_updates_are_refused_with_the_key():
    mean = RunningMean()
    mean.add(ArrayRecord(_state(0)), 1)
    state = _state(1)
    del state["fc.bias"]
    with pytest.raises(ValueError, match="fc.bias"):
        mean.add(ArrayRecord(state), 1)
    with pytest.raises(ValueError, match="no update"):
        RunningMean().result()


def _reply(node_id: int, content: RecordDict) -> Message:
    ins = Message(
        content=RecordDict({"config": ConfigRecord({})}),
        dst_node_id=node_id,
        message_type=MessageType.TRAIN,
    )
    ins.metadata.__dict__["_message_id"] = f"m{node_id}"
    reply = Message(content, reply_to=ins)
    reply.metadata.__dict__["_src_node_id"] = node_id
    return reply


def test_streaming_strategy_matches_flowers_fedavg_end_to_end():
    replies = [_reply(10 + i, _content(i, n)) for i, n in enumerate([4, 9, 2])]
    ours, ours_metrics = StreamingFedAvg().aggregate_train(1, replies)
    theirs, theirs_metrics = FedAvg().aggregate_train(1, replies)
    for key in theirs:
        np.testing.assert_array_equal(ours[key].numpy(), theirs[key].numpy())
    assert dict(ours_metrics) == pytest.approx(dict(theirs_metrics))


def test_every_registered_strategy_aggregates_with_the_streaming_fedavg():
    for name, cls in STRATEGIES.items():
        if name in ("fedmedian", "fedtrimmedavg", "krum"):
            continue  # robust aggregation: a median / trimmed mean / one update, not a mean
        assert issubclass(cls, StreamingFedAvg), name
