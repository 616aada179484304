from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM
from flwr.supercore.task_identity import TaskIdentity

from client.app import central_dp_clipping_mod
from simulation.cli import main
from strategies.audit import AuditTrail
from strategies.central_dp import CentralDPAccountant, central_dp_epsilon, with_central_dp
from strategies.fedavg import ClinicalFedAvg
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


class _Grid:
    """The part of Flower's Grid that FedAvg.configure_train uses."""

    def __init__(self, node_ids: list[int]) -> None:
        self._ids = node_ids

    def get_node_ids(self) -> list[int]:
        return list(self._ids)


SIZE = 60_000  # values per update: enough to estimate the noise's std within ~1 %
NOISE, CLIP, SITES = 1.0, 0.5, 3
# How far each site's training moves the model (L2 norm), before clipping.
SITE_NORMS = {1: 10.0, 2: 0.2, 3: 3.0}


def _site(norm: float, seed: int):
    direction = torch.from_numpy(np.random.default_rng(seed).normal(size=SIZE)).float()
    delta = direction / direction.norm() * norm

    def _train(msg: Message, context: Context) -> Message:
        trained = {k: v + delta for k, v in msg.content["arrays"].to_torch_state_dict().items()}
        metrics = MetricRecord({"num-examples": 10 * seed, "unit-weight": 1})
        site = ConfigRecord({"site-id": f"site-{seed}"})
        content = RecordDict({"arrays": ArrayRecord(trained), "metrics": metrics, "site": site})
        return Message(content, reply_to=msg)

    return _train


def _central_dp_round(tmp_path):
    """Flower's central-DP wrapper (ours) around the clinical FedAvg, with an audit trail."""
    strategy = ClinicalFedAvg(min_train_nodes=SITES, min_available_nodes=SITES)
    strategy.weighted_by_key = "unit-weight"
    strategy.audit = AuditTrail(path=tmp_path / "audit.jsonl", settings={})
    runner = with_central_dp(
        strategy, noise_multiplier=NOISE, clipping_norm=CLIP, num_sites=SITES, delta=1e-5
    )
    start = torch.zeros(SIZE)
    return runner, start, strategy


def _train_round(runner, start, server_round, fail=None):
    """The wrapper's configure_train, then each site behind its clipping mod (or failing)."""
    asked = runner.configure_train(
        server_round, ArrayRecord({"w": start}), ConfigRecord({}), _Grid(list(SITE_NORMS))
    )
    replies = []
    for msg in asked:
        node = msg.metadata.dst_node_id
        msg.metadata.__dict__["_message_id"] = f"m{server_round}-{node}"
        if node == fail:
            reply = Message(Error(code=101, reason=f"site-{node} declines"), reply_to=msg)
        else:
            reply = central_dp_clipping_mod(msg, CONTEXT, _site(SITE_NORMS[node], node))
        reply.metadata.__dict__["_src_node_id"] = node
        replies.append(reply)
    return replies


def test_central_dp_clips_each_update_and_noises_the_mean(tmp_path) -> None:
    runner, start, strategy = _central_dp_round(tmp_path)
    replies = _train_round(runner, start, 1)
    sent = {
        r.metadata.src_node_id: r.content["arrays"]["w"].numpy() - start.numpy() for r in replies
    }
    # Clipped norms: what each site sends is at most the clipping norm from the global model.
    for node, update in sent.items():
        norm = float(np.linalg.norm(update))
        assert norm <= CLIP * (1 + 1e-5), node
        assert norm == pytest.approx(min(SITE_NORMS[node], CLIP), rel=1e-4), node
    plain_mean = np.mean(list(sent.values()), axis=0)
    arrays, _ = runner.aggregate_train(1, replies)
    noise = arrays["w"].numpy() - start.numpy() - plain_mean
    # Added noise: Gaussian, mean 0, std noise_multiplier * clipping_norm / number of sites.
    expected_std = NOISE * CLIP / SITES
    assert np.std(noise) == pytest.approx(expected_std, rel=0.02)
    assert abs(np.mean(noise)) < 4 * expected_std / np.sqrt(SIZE)
    assert np.linalg.norm(noise) > 100 * np.linalg.norm(plain_mean)  # noise, not the mean
    # The accountant: per round and cumulative epsilon, in the wrapper and the audit trail.
    (entry,) = runner.privacy.rounds
    assert entry["released"] and entry["epsilon"] == pytest.approx(entry["epsilon-round"])
    audit = json.loads((tmp_path / "audit.jsonl").read_text().splitlines()[0])
    assert audit["central-dp"]["epsilon"] == pytest.approx(entry["epsilon"])
    assert sorted(audit["answered"]) == ["site-1", "site-2", "site-3"]


def test_central_dp_accounts_per_round_and_cumulative_epsilon(tmp_path) -> None:
    runner, start, _ = _central_dp_round(tmp_path)
    for server_round in (1, 2):
        runner.aggregate_train(server_round, _train_round(runner, start, server_round))
    # a round in which a site declines: Flower's wrapper releases nothing, no epsilon is spent
    arrays, _ = runner.aggregate_train(3, _train_round(runner, start, 3, fail=2))
    assert arrays is None
    rounds = runner.privacy.rounds
    assert [r["released"] for r in rounds] == [True, True, False]
    assert rounds[0]["epsilon-round"] == rounds[1]["epsilon-round"] > 0
    assert rounds[0]["epsilon"] < rounds[1]["epsilon"] == rounds[2]["epsilon"]
    assert rounds[2]["epsilon-round"] == 0.0
    # composition: two releases cost less than twice one (RDP), more than one
    assert rounds[0]["epsilon"] < rounds[1]["epsilon"] < 2 * rounds[0]["epsilon"]
    summary = runner.privacy.summary()
    assert summary["epsilon"] == rounds[-1]["epsilon"] and summary["releases"] == 2
    audit = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [a["central-dp"]["epsilon"] for a in audit] == pytest.approx(
        [r["epsilon"] for r in rounds]
    )
    assert audit[2]["failed"][0]["reason"] == "error code 101"  # never the site's own text


def test_flower_and_opacus_accountants_agree() -> None:
    pytest.importorskip("dp_accounting")
    flower = CentralDPAccountant(noise_multiplier=1.2, num_sites=3, delta=1e-5)
    opacus = CentralDPAccountant(noise_multiplier=1.2, num_sites=3, delta=1e-5, prefer_flower=False)
    assert flower.name == "flwr[dp] RDP" and opacus.name == "opacus RDP"
    for releases in (1, 5, 20):
        assert flower.epsilon_after(releases) == pytest.approx(
            opacus.epsilon_after(releases), rel=0.05
        )
    with pytest.raises(ValueError, match="noise_multiplier must be > 0"):
        CentralDPAccountant(noise_multiplier=0, num_sites=3, delta=1e-5)


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
    central = run["central_dp"]
    assert central["epsilon"] == pytest.approx(
        central_dp_epsilon(noise_multiplier=0.5, rounds=2, delta=1e-5), rel=0.05
    )
    assert [r["round"] for r in central["rounds"]] == [1, 2]
    assert central["rounds"][-1]["epsilon"] == central["epsilon"] > central["rounds"][0]["epsilon"]
    audit = [json.loads(x) for x in (out / "fedavg" / "audit.jsonl").read_text().splitlines()]
    assert [a["central-dp"]["epsilon"] for a in audit] == pytest.approx(
        [r["epsilon"] for r in central["rounds"]]
    )
    assert len(run["rounds"]) == 2 and set(run["final"]["sites"]) == {"north", "south"}
