"""The ServerApp: reads the run config, builds the global model and runs the strategy.

:func:`run_federation` is the whole server side of a run; the Flower ``main`` only passes it
the grid and run config, so simulation and deployment execute the same code.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from models import create_model_for_task
from models.tasks import TaskSpec
from server.config import RunConfig
from strategies.fedavg import ClinicalFedAvg
from strategies.history import RoundRecord, RunHistory

__all__ = ["app", "run_federation", "FederationResult"]

_log = logging.getLogger(__name__)

app = ServerApp()


@dataclass
class FederationResult:
    """What the server side of a run produced."""

    config: RunConfig
    task: TaskSpec
    history: RunHistory
    final_state: dict[str, torch.Tensor]
    wall_seconds: float


def run_federation(
    grid: Grid,
    run_config: Mapping[str, object],
    *,
    on_round_end: Callable[[RoundRecord], None] | None = None,
) -> FederationResult:
    """Run FedAvg for ``num-server-rounds`` rounds over the nodes of ``grid``."""
    started = time.perf_counter()
    config = RunConfig.from_mapping(run_config)
    task = config.task_spec()
    torch.manual_seed(config.seed)
    model = create_model_for_task(task)
    strategy = ClinicalFedAvg(
        fraction_train=config.fraction_train,
        fraction_evaluate=1.0,
        min_train_nodes=config.min_train_nodes,
        min_evaluate_nodes=config.min_train_nodes,
        min_available_nodes=config.min_available_nodes,
        on_round_end=on_round_end,
    )
    _log.info(
        "federation: task %s, model %s (%s @ %d px), %d rounds",
        task.name, task.model, task.backbone, task.image_size, config.num_server_rounds,
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=config.num_server_rounds,
        timeout=config.round_timeout,
        train_config=ConfigRecord(config.client_config()),
        evaluate_config=ConfigRecord(config.client_config()),
    )
    final_state = result.arrays.to_torch_state_dict() if result.arrays else model.state_dict()
    outcome = FederationResult(
        config=config,
        task=task,
        history=strategy.history,
        final_state=final_state,
        wall_seconds=time.perf_counter() - started,
    )
    if config.out_dir:
        _write_outputs(outcome, Path(config.out_dir))
    return outcome


def _write_outputs(outcome: FederationResult, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(outcome.final_state, out_dir / "global_model.pt")
    history = {
        "task": outcome.task.to_dict(),
        "config": outcome.config.to_dict(),
        "rounds": [r.to_results() for r in outcome.history.rounds],
        "wall_seconds": outcome.wall_seconds,
    }
    (out_dir / "history.json").write_text(json.dumps(history, indent=2))
    _log.info("server outputs written to %s", out_dir)


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_federation(grid, context.run_config)
