"""The ServerApp for secure aggregation: FedAvg through Flower's SecAgg+ workflow.

:func:`run_secure_federation` is the secure counterpart of :func:`server.app.run_federation`:
same run config, same global model (``create_model_for_task(task, dp_safe=...)`` seeded with
``seed``), same outputs (``global_model.pt``, ``history.json``, ``audit.jsonl``, the run store),
but the training rounds run Flower's SecAgg+ protocol (legacy API: ``LegacyContext`` +
``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))`` around :class:`SecureFedAvg`), so the
server learns only the example-weighted mean of the sites' updates. Sites must run
:mod:`client.secagg_app`. See docs/secure-aggregation.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from flwr.app import Context
from flwr.server import LegacyContext, ServerConfig
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid, ServerApp

from models import create_model_for_task
from models.plan_secagg import SECAGG_MODULUS
from server.app import FederationResult, compose, open_recorder, write_outputs
from server.config import RunConfig
from strategies.audit import AUDIT_FILE, AuditTrail, dp_settings
from strategies.history import RoundRecord
from strategies.secagg import SecureFedAvg

__all__ = ["app", "run_secure_federation", "secagg_workflow"]

_log = logging.getLogger(__name__)

app = ServerApp()


def secagg_workflow(config: RunConfig) -> SecAggPlusWorkflow:
    """Flower's SecAgg+ fit workflow with the run config's ``secagg-*`` settings.

    ``secagg-num-shares`` 0 becomes Flower's ``num_shares=1.0`` (a fraction: every sampled
    site shares with every other, i.e. SecAgg); ``secagg-reconstruction-threshold`` up to 1 is
    a fraction of the shares, above 1 a count (Flower's int/float convention).
    """
    shares: int | float = config.secagg_num_shares or 1.0
    threshold = config.secagg_reconstruction_threshold
    return SecAggPlusWorkflow(
        num_shares=shares,
        reconstruction_threshold=int(threshold) if threshold > 1 else float(threshold),
        max_weight=config.secagg_max_weight,
        clipping_range=config.secagg_clipping_range,
        quantization_range=config.secagg_quantization_range,
        modulus_range=SECAGG_MODULUS,
        timeout=config.round_timeout,
    )


def run_secure_federation(
    grid: Grid,
    context: Context,
    *,
    run_config: Mapping[str, object] | None = None,
    on_round_end: Callable[[RoundRecord], None] | None = None,
) -> FederationResult:
    """Run ``num-server-rounds`` rounds of FedAvg with SecAgg+ over the nodes of ``grid``.

    Args:
        grid: the Flower grid.
        context: the ServerApp's context (wrapped in Flower's ``LegacyContext``).
        run_config: the run config; default ``context.run_config``. ``secagg`` is forced on
            (this app is always secure) and the usual checks apply (FedAvg only, no FedBN,
            no central DP).
        on_round_end: called with each finished round's record.

    Raises:
        server.config.RunConfigError: for a config secure aggregation cannot run.
    """
    started = time.perf_counter()
    raw = dict(run_config if run_config is not None else context.run_config)
    config = RunConfig.from_mapping({**raw, "secagg": True})
    task = config.task_spec()
    torch.manual_seed(config.seed)
    model = create_model_for_task(task, dp_safe=config.uses_dp_model)
    initial = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    recorder = open_recorder(config, task)

    def _checkpoint(server_round: int, state: Mapping[str, np.ndarray]) -> None:
        if recorder is not None and recorder.checkpoint_dir is not None:
            recorder.save_checkpoint(server_round, _to_torch(state))

    train_config = {
        **config.client_config(),
        "secagg-max-weight": config.secagg_max_weight,
        "secagg-clipping-range": config.secagg_clipping_range,
    }
    strategy = SecureFedAvg(
        initial_state=initial,
        train_config=train_config,
        evaluate_config=config.client_config(),
        quantization_range=config.secagg_quantization_range,
        modulus=SECAGG_MODULUS,
        on_round_end=compose(on_round_end, recorder.on_round_end if recorder else None),
        on_global=_checkpoint,
        audit=AuditTrail(
            path=Path(config.out_dir) / AUDIT_FILE if config.out_dir else None,
            settings=dp_settings(config.to_dict()),
        ),
        fraction_fit=config.fraction_train,
        fraction_evaluate=1.0,
        min_fit_clients=config.min_train_nodes,
        min_evaluate_clients=config.min_train_nodes,
        min_available_clients=config.min_available_nodes,
    )
    legacy = LegacyContext(
        context,
        config=ServerConfig(
            num_rounds=config.num_server_rounds, round_timeout=config.round_timeout
        ),
        strategy=strategy,
    )
    _log.info(
        "secure federation (SecAgg+): task %s, model %s (%s @ %d px), %d rounds",
        task.name,
        task.model,
        task.backbone,
        task.image_size,
        config.num_server_rounds,
    )
    try:
        DefaultWorkflow(fit_workflow=secagg_workflow(config))(grid, legacy)
        outcome = FederationResult(
            config=config,
            task=task,
            history=strategy.history,
            final_state=_to_torch(strategy.global_state),
            wall_seconds=time.perf_counter() - started,
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


def _to_torch(state: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(v, copy=True)) for k, v in state.items()}


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_secure_federation(grid, context)
