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
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from models import create_model_for_task
from models.tasks import TaskSpec
from server.config import RunConfig, RunConfigError
from server.store import RunRecorder
from strategies.audit import AUDIT_FILE, AuditTrail, dp_settings
from strategies.central_dp import UNIFORM_WEIGHT_KEY, CentralDPFixedClipping, with_central_dp
from strategies.factory import build_strategy
from strategies.history import RoundRecord, RunHistory

__all__ = ["app", "run_federation", "FederationResult", "open_recorder", "compose", "write_outputs"]

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
    #: Central DP accounting (:meth:`CentralDPAccountant.summary`); None without central DP.
    central_dp: dict[str, object] | None = None


def run_federation(
    grid: Grid,
    run_config: Mapping[str, object],
    *,
    on_round_end: Callable[[RoundRecord], None] | None = None,
) -> FederationResult:
    """Run FedAvg for ``num-server-rounds`` rounds over the nodes of ``grid``."""
    started = time.perf_counter()
    config = RunConfig.from_mapping(run_config)
    if config.secagg:  # never fall back to sending updates in clear
        raise RunConfigError(
            "secagg=true needs the secure-aggregation apps: server.secagg_app:app with "
            "client.secagg_app:app (docs/secure-aggregation.md)"
        )
    task = config.task_spec()
    torch.manual_seed(config.seed)
    model = create_model_for_task(task, dp_safe=config.uses_dp_model)
    recorder = open_recorder(config, task)
    strategy = build_strategy(
        config.strategy,
        proximal_mu=config.proximal_mu,
        server_lr=config.server_lr,
        fraction_train=config.fraction_train,
        fraction_evaluate=1.0,
        min_train_nodes=config.min_train_nodes,
        min_evaluate_nodes=config.min_train_nodes,
        min_available_nodes=config.min_available_nodes,
        on_round_end=compose(on_round_end, recorder.on_round_end if recorder else None),
    )
    strategy.audit = AuditTrail(  # type: ignore[attr-defined]  # strategies/audit.py
        path=Path(config.out_dir) / AUDIT_FILE if config.out_dir else None,
        settings=dp_settings(config.to_dict()),
    )
    strategy.update_dtype = config.update_dtype  # type: ignore[attr-defined]  # strategies/streaming.py
    runner: Strategy = strategy
    if config.central_dp:
        strategy.weighted_by_key = UNIFORM_WEIGHT_KEY  # the noise calibration assumes a plain mean
        runner = with_central_dp(
            strategy,
            noise_multiplier=config.central_dp_noise_multiplier,
            clipping_norm=config.central_dp_clipping_norm,
            num_sites=config.min_train_nodes,
            delta=config.central_dp_delta,
        )
    _log.info(
        "federation: task %s, model %s (%s @ %d px), %d rounds",
        task.name,
        task.model,
        task.backbone,
        task.image_size,
        config.num_server_rounds,
    )
    try:
        result = runner.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=config.num_server_rounds,
            timeout=config.round_timeout,
            train_config=ConfigRecord(config.client_config()),
            evaluate_config=ConfigRecord(config.client_config()),
            evaluate_fn=_checkpoint_fn(recorder),
        )
        final_state = result.arrays.to_torch_state_dict() if result.arrays else model.state_dict()
        outcome = FederationResult(
            config=config,
            task=task,
            history=strategy.history,
            final_state=final_state,
            wall_seconds=time.perf_counter() - started,
            central_dp=runner.privacy.summary()
            if isinstance(runner, CentralDPFixedClipping)
            else None,
        )
        if config.out_dir:
            write_outputs(outcome, Path(config.out_dir))
    except BaseException as err:
        if recorder is not None:
            recorder.close(status="failed", error=f"{type(err).__name__}: {err}")
        raise
    if recorder is not None:
        recorder.close(status="finished")
    return outcome


def open_recorder(config: RunConfig, task: TaskSpec) -> RunRecorder | None:
    """Add this run to the run store at ``db-url`` (None when no store is configured)."""
    if not config.db_url:
        return None
    return RunRecorder.start(
        config.db_url,
        name=config.run_name,
        task=task.name,
        model=task.model,
        backbone=task.backbone,
        strategy=config.strategy,
        classes=task.classes,
        rounds_planned=config.num_server_rounds,
        config=config.to_dict(),
        out_dir=config.out_dir,
    )


def compose(
    *callbacks: Callable[[RoundRecord], None] | None,
) -> Callable[[RoundRecord], None] | None:
    """One round callback that calls each given one in order (None when none is given)."""
    given = [c for c in callbacks if c is not None]
    if not given:
        return None

    def _all(record: RoundRecord) -> None:
        for callback in given:
            callback(record)

    return _all


def _checkpoint_fn(
    recorder: RunRecorder | None,
) -> Callable[[int, ArrayRecord], MetricRecord | None] | None:
    """Flower's per-round ``evaluate_fn`` hook, used to save each round's global model."""
    if recorder is None or recorder.checkpoint_dir is None:
        return None

    def _save(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round >= 1:
            recorder.save_checkpoint(server_round, arrays.to_torch_state_dict())
        return None

    return _save


def write_outputs(outcome: FederationResult, out_dir: Path) -> None:
    """Write ``global_model.pt`` (final weights) and ``history.json`` (task, config, rounds,
    wall time) into ``out_dir``, creating it if needed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(outcome.final_state, out_dir / "global_model.pt")
    history = {
        "task": outcome.task.to_dict(),
        "config": outcome.config.to_dict(),
        "rounds": [r.to_results() for r in outcome.history.rounds],
        "wall_seconds": outcome.wall_seconds,
    }
    if outcome.central_dp is not None:
        history["central_dp"] = outcome.central_dp
    (out_dir / "history.json").write_text(json.dumps(history, indent=2))
    _log.info("server outputs written to %s", out_dir)


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_federation(grid, context.run_config)
