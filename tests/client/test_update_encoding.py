"""Train replies: the one-copy record codec and float16 update encoding, end to end with the
server's aggregation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.app import encode_update, record_from_state, state_from_record
from server.config import RunConfig, RunConfigError
from strategies.streaming import StreamingFedAvg


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    yield


def _global_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "conv.weight": torch.randn(32, 16, 3, 3, generator=g) * 0.2,
        "bn.running_var": torch.rand(16, generator=g) + 0.5,
        "bn.num_batches_tracked": torch.tensor(7),
        "fc.weight": torch.randn(2, 1024, generator=g) * 0.1,
    }


def _trained(start: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        k: v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v + seed
        for k, v in start.items()
    }


def test_record_codec_round_trips_and_matches_flowers_payload():
    state = _global_state()
    record = record_from_state(state)
    for key, array in ArrayRecord(state).items():
        assert record[key].data == array.data and record[key].stype == array.stype, key
    back = state_from_record(record)
    for key, value in state.items():
        assert torch.equal(back[key], value), key
    model = torch.nn.Linear(1024, 2)
    model.load_state_dict(state_from_record(record_from_state(model.state_dict())))


def test_float16_updates_halve_the_bytes_and_aggregate_to_the_float32_mean():
    start = _global_state()
    sites = [(_trained(start, 1), 30), (_trained(start, 2), 10)]
    replies, plain = [], []
    for node, (state, n) in enumerate(sites, start=1):
        encoded = encode_update(state, start, "float16")
        assert encoded["conv.weight"].dtype == "float16"
        assert encoded["bn.num_batches_tracked"].dtype == "int64"  # integers travel as they are
        full = encode_update(state, start, "float32")
        floats = [k for k, v in state.items() if v.is_floating_point()]
        half_bytes = sum(len(encoded[k].data) for k in floats)
        full_bytes = sum(len(full[k].data) for k in floats)
        assert half_bytes < 0.55 * full_bytes
        replies.append(_reply(node, encoded, n))
        plain.append(_reply(node, full, n))

    strategy = StreamingFedAvg()
    strategy.update_dtype = "float16"
    strategy._round_start_arrays = ArrayRecord(start)  # what configure_train keeps
    decoded, _ = strategy.aggregate_train(1, replies)
    expected, _ = StreamingFedAvg().aggregate_train(1, plain)
    for key in start:
        got, want = decoded[key].numpy(), expected[key].numpy()
        assert got.dtype == want.dtype, key
        # half precision of a 0.01-sized difference: error well below 1e-4
        np.testing.assert_allclose(got, want, atol=5e-5, err_msg=key)
    # and the float16 path is not the float32 one in disguise
    assert not np.array_equal(decoded["conv.weight"].numpy(), expected["conv.weight"].numpy())


def _reply(node_id: int, arrays: ArrayRecord, n: int) -> Message:
    ins = Message(
        content=RecordDict({"config": ConfigRecord({})}),
        dst_node_id=node_id,
        message_type=MessageType.TRAIN,
    )
    ins.metadata.__dict__["_message_id"] = f"m{node_id}"
    content = RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": n})})
    reply = Message(content, reply_to=ins)
    reply.metadata.__dict__["_src_node_id"] = node_id
    return reply


def test_update_dtype_is_checked_in_the_run_config():
    assert RunConfig.from_mapping({"update-dtype": "float16"}).client_config()["update-dtype"] == (
        "float16"
    )
    with pytest.raises(RunConfigError, match="update-dtype must be one of"):
        RunConfig.from_mapping({"update-dtype": "int4"})
    with pytest.raises(RunConfigError, match="central DP"):
        RunConfig.from_mapping({"update-dtype": "float16", "central-dp-noise-multiplier": 1.0})
    with pytest.raises(ValueError, match="float32 or float16"):
        encode_update({}, {}, "bfloat16")
