"""FedBN, FedProx and the baselines: unit checks, then one run of every method kind."""

from __future__ import annotations

import json

import pytest
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.supercore.task_identity import TaskIdentity
from torch.utils.data import DataLoader, TensorDataset

from client.train import TrainConfig, train_local
from models import create_model, norm_state_keys
from simulation.cli import main
from strategies.factory import STRATEGIES, build_strategy
from strategies.fedbn import KEEP_LOCAL_NORM_KEY
from tests.simulation.test_end_to_end import SCENARIO

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    yield


class _Grid:
    def get_node_ids(self):
        return [1, 2]


def test_fedbn_keeps_norm_layers_out_of_the_average() -> None:
    import numpy as np

    strategy = build_strategy("fedbn", min_available_nodes=1, min_train_nodes=1)
    global_arrays = ArrayRecord(
        {"conv.w": Array(np.zeros(3, np.float32)), "bn.w": Array(np.ones(2, np.float32))}
    )
    strategy.sample = None
    config = ConfigRecord({})
    strategy._global = global_arrays  # what configure_train records
    replies = []
    for node, value in ((1, 2.0), (2, 4.0)):
        ins = Message(
            RecordDict({"config": config}), dst_node_id=node, message_type=MessageType.TRAIN
        )
        ins.metadata.__dict__["_message_id"] = f"m{node}"
        content = RecordDict(
            {
                "arrays": ArrayRecord({"conv.w": Array(np.full(3, value, np.float32))}),
                "metrics": MetricRecord({"num-examples": 10}),
            }
        )
        replies.append(Message(content, reply_to=ins))
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays["conv.w"].numpy().tolist() == [3.0, 3.0, 3.0]
    assert arrays["bn.w"].numpy().tolist() == [1.0, 1.0]  # the server's untouched entry


def test_norm_keys_cover_batchnorm_and_nothing_else() -> None:
    model = create_model("mufnet", num_classes=2, backbone="test_efficientnet")
    keys = norm_state_keys(model)
    assert keys and all(".bn" in k or "norm" in k or k.startswith("backbone.bn") for k in keys)
    assert "fc.weight" not in keys


def test_proximal_term_keeps_weights_near_the_start() -> None:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.rand(32, 3, 16, 16, generator=g), torch.arange(32) % 2)

    def drift(mu: float) -> float:
        torch.manual_seed(0)
        model = create_model("single_modality", num_classes=2, backbone="test_efficientnet")
        start = [p.detach().clone() for p in model.parameters()]
        train_local(
            model,
            DataLoader(data, batch_size=8),
            config=TrainConfig(epochs=3, learning_rate=0.1, focal_gamma=0, proximal_mu=mu),
            class_counts=[16, 16],
        )
        return sum(
            float((p - s).pow(2).sum()) for p, s in zip(model.parameters(), start, strict=True)
        )

    assert drift(5.0) < 0.5 * drift(0.0)


def test_every_strategy_name_builds() -> None:
    for name in STRATEGIES:
        assert build_strategy(name).history.rounds == []
    with pytest.raises(ValueError, match="Did you mean 'fedprox'"):
        build_strategy("fedprx")


@pytest.mark.slow
def test_methods_in_one_run(tmp_path) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(SCENARIO)
    out = tmp_path / "out"
    assert (
        main(
            [
                "simulate",
                str(scenario),
                "--out",
                str(out),
                "--cpus",
                "2",
                "--methods",
                "fedbn,fedprox,local,pooled",
            ]
        )
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    methods = [run["method"] for run in results["runs"]]
    assert methods == ["fedbn", "fedprox", "local:north", "local:south", "pooled"]
    for run in results["runs"]:
        assert len(run["rounds"]) == 2, run["method"]
        # every model is evaluated on every site's own test rows
        assert set(run["final"]["sites"]) == {"north", "south"}, run["method"]
        n = run["final"]["global"]["n"]
        assert n == sum(m["n"] for m in run["final"]["sites"].values())
    fedbn_history = json.loads((out / "fedbn" / "history.json").read_text())
    assert fedbn_history["config"]["strategy"] == "fedbn"
    assert KEEP_LOCAL_NORM_KEY == "keep-local-norm"
    report = (out / "report.md").read_text()
    assert "## pooled" in report and "## local:north" in report
