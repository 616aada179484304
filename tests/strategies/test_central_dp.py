from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM
from flwr.supercore.task_identity import TaskIdentity

from client.app import central_dp_clipping_mod
from simulation.cli import main
from strategies.central_dp import central_dp_epsilon
from tests.simulation.test_end_to_end import SCENARIO


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    yield


def _message(config: dict) -> Message:
    msg = Message(
        content=RecordDict(
            {"arrays": ArrayRecord({"w": torch.zeros(4)}), "config": ConfigRecord(config)}
        ),
        dst_node_id=1,
        message_type=MessageType.TRAIN,
    )
    msg.metadata.__dict__["_message_id"] = "m"
    return msg


def _far_update(msg: Message, context: Context) -> Message:
    return Message(RecordDict({"arrays": ArrayRecord({"w": torch.full((4,), 10.0)})}), reply_to=msg)


CONTEXT = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})


def test_update_is_clipped_when_the_server_runs_central_dp() -> None:
    reply = central_dp_clipping_mod(_message({KEY_CLIPPING_NORM: 2.0}), CONTEXT, _far_update)
    sent = reply.content["arrays"]["w"].numpy()
    assert np.linalg.norm(sent) == pytest.approx(2.0, rel=1e-5)


def test_mod_passes_through_without_central_dp() -> None:
    reply = central_dp_clipping_mod(_message({"x": 1}), CONTEXT, _far_update)
    assert reply.content["arrays"]["w"].numpy().tolist() == [10.0] * 4


def test_epsilon_grows_with_rounds_and_shrinks_with_noise() -> None:
    e1 = central_dp_epsilon(noise_multiplier=1.0, rounds=5, delta=1e-5)
    e2 = central_dp_epsilon(noise_multiplier=1.0, rounds=20, delta=1e-5)
    e3 = central_dp_epsilon(noise_multiplier=4.0, rounds=20, delta=1e-5)
    assert 0 < e1 < e2 and e3 < e2


@pytest.mark.slow
def test_central_dp_simulation_reports_epsilon(tmp_path) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(SCENARIO)
    out = tmp_path / "out"
    code = main(
        [
            "simulate",
            str(scenario),
            "--out",
            str(out),
            "--cpus",
            "2",
            "--run-config",
            "central-dp-noise-multiplier=0.5 central-dp-clipping-norm=5.0",
        ]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    (run,) = results["runs"]
    assert (
        results["config"]["dp-safe-model"] is False
        and results["config"]["central-dp-noise-multiplier"] == 0.5
    )
    assert run["central_dp"]["epsilon"] == pytest.approx(
        central_dp_epsilon(noise_multiplier=0.5, rounds=2, delta=1e-5)
    )
    assert len(run["rounds"]) == 2 and set(run["final"]["sites"]) == {"north", "south"}
