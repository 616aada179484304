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
from flwr.serverapp.strategy import Strategy

from models import create_model_for_task
from models.array_codec import tensor_views
from models.tasks import TaskSpec
from server.config import RunConfig, RunConfigError
from server.resume import (
    ResumeError,
    ResumePoint,
    config_mismatches,
    find_resume_point,
    load_resume_point,
    save_resume_point,
)
from server.rounds import run_rounds
from server.store import RunRecorder, RunStoreError
from strategies.audit import AUDIT_FILE, AuditTrail, dp_settings
from strategies.central_dp import UNIFORM_WEIGHT_KEY, CentralDPFixedClipping, with_central_dp
from strategies.factory import build_strategy
from strategies.history import RoundRecord, RunHistory
from strategies.validation import UpdateChecks

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
    """Run ``num-server-rounds`` rounds over the nodes of ``grid`` (continuing a crashed run
    when ``resume-run`` is set; see :mod:`server.resume`)."""
    started = time.perf_counter()
    config = RunConfig.from_mapping(run_config)
    if config.secagg:  # never fall back to sending updates in clear
        raise RunConfigError(
            "secagg=true needs the secure-aggregation apps: server.secagg_app:app with "
            "client.secagg_app:app (docs/secure-aggregation.md)"
        )
    task = config.task_spec()
    resume = _load_resume(config)
    torch.manual_seed(config.seed)
    model = create_model_for_task(task, dp_safe=config.uses_dp_model)
    if resume is not None:
        model.load_state_dict(resume.arrays)
    recorder = open_recorder(config, task, resume=resume)
    strategy = build_strategy(
        config.strategy,
        proximal_mu=config.proximal_mu,
        server_lr=config.server_lr,
        trim_beta=config.trim_beta,
        krum_malicious=config.krum_malicious,
        fraction_train=config.fraction_train,
        fraction_evaluate=1.0,
        min_train_nodes=config.min_train_nodes,
        min_evaluate_nodes=config.min_train_nodes,
        min_available_nodes=config.min_available_nodes,
        on_round_end=compose(on_round_end, recorder.on_round_end if recorder else None),
    )
    strategy.min_answers = config.min_answers  # type: ignore[attr-defined]
    strategy.update_checks = UpdateChecks(  # type: ignore[attr-defined]  # strategies/screening.py
        norm_factor=config.update_norm_factor,
        num_classes=config.task_spec().num_classes,
        score_bins=config.score_bins,
        max_site_examples=getattr(config, "max_site_examples", 100000),
    )
    strategy.audit = AuditTrail(  # type: ignore[attr-defined]  # strategies/audit.py
        path=Path(config.out_dir) / AUDIT_FILE if config.out_dir else None,
        settings=dp_settings(config.to_dict()),
        keep_rounds=resume.round if resume is not None else 0,
    )
    if resume is not None:
        strategy.load_strategy_state(resume.strategy)  # type: ignore[attr-defined]
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
    if resume is not None and isinstance(runner, CentralDPFixedClipping):
        runner.privacy.restore(resume.extra.get("central-dp", {}))  # epsilon spent before
    first_round = resume.round + 1 if resume is not None else 1
    _log.info(
        "federation: task %s, model %s (%s @ %d px), rounds %d-%d",
        task.name,
        task.model,
        task.backbone,
        task.image_size,
        first_round,
        config.num_server_rounds,
    )
    try:
        arrays = run_rounds(
            runner,
            grid,
            arrays=ArrayRecord(model.state_dict()),
            first_round=first_round,
            num_rounds=config.num_server_rounds,
            timeout=config.round_timeout,
            train_config=ConfigRecord(config.client_config()),
            evaluate_config=ConfigRecord(config.client_config()),
            seed=config.seed,
            after_round=_after_round_fn(config, strategy, recorder, runner),
        )
        outcome = FederationResult(
            config=config,
            task=task,
            history=strategy.history,
            final_state=arrays.to_torch_state_dict(),
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


def _load_resume(config: RunConfig) -> ResumePoint | None:
    """The resume point ``resume-run`` names, checked against this run's settings."""
    if not config.resume_run:
        return None
    path = find_resume_point(config.resume_run, db_url=config.db_url)
    point = load_resume_point(path)
    problems = config_mismatches(point.config, config.to_dict())
    if problems:
        raise ResumeError(
            f"resume-run: {path} was written by a run with other settings ("
            + "; ".join(problems)
            + "): resume with the settings of that run"
        )
    _log.info("resuming from %s: round %d of %d done", path, point.round, config.num_server_rounds)
    return point


def _after_round_fn(
    config: RunConfig, strategy: Strategy, recorder: RunRecorder | None, runner: Strategy
) -> Callable[[int, ArrayRecord], None]:
    """After each round: the round's global model into the run store's checkpoints, and the
    resume point (model + strategy state + round) into the run's folder."""
    folder: Path | None = None
    if config.out_dir:
        folder = Path(config.out_dir)
    elif recorder is not None and recorder.checkpoint_dir is not None:
        folder = recorder.checkpoint_dir
    if folder is None:
        _log.warning("no out-dir and no SQLite run store: this run cannot be resumed")

    def _after(server_round: int, arrays: ArrayRecord) -> None:
        state = tensor_views(arrays)  # no copy: the writers below copy what they keep
        if recorder is not None:
            recorder.save_checkpoint(server_round, state)
        if folder is not None:
            save_resume_point(
                folder,
                ResumePoint(
                    round=server_round,
                    arrays=state,
                    strategy=strategy.strategy_state(),  # type: ignore[attr-defined]
                    config=config.to_dict(),
                    run_id=recorder.run_id if recorder is not None else None,
                    extra=(
                        {"central-dp": runner.privacy.state()}
                        if isinstance(runner, CentralDPFixedClipping)
                        else {}
                    ),
                ),
            )

    return _after


def open_recorder(
    config: RunConfig, task: TaskSpec, *, resume: ResumePoint | None = None
) -> RunRecorder | None:
    """Add this run to the run store at ``db-url`` (None when no store is configured); a
    resumed run continues its own entry when the store holds it."""
    if not config.db_url:
        return None
    if resume is not None and resume.run_id is not None:
        try:
            return RunRecorder.resume(
                config.db_url, int(resume.run_id), from_round=resume.round, out_dir=config.out_dir
            )
        except RunStoreError as err:
            _log.warning("run store: %s; recording the resumed run as a new run", err)
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
