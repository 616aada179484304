"""The comparisons a federation must beat or approach: each site alone, and pooled data.

- ``local:<site>``: one model per site, trained only on that site's training rows and
  evaluated on every site's test rows (how well does a hospital do on its own?);
- ``pooled``: one model trained on the union of all sites' training rows (what federation
  would reach if data could be pooled: an upper bound, forbidden in practice).

Both use the same task, model initialisation (seed), splits (each site's own patient-level
split, exactly as its ClientApp makes it) and training budget as the federated methods:
``num-server-rounds x local-epochs`` epochs over every training row, evaluated after every
``local-epochs`` epochs so their curves line up with the federated rounds. No Flower here.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import torch

from client.dataset import make_loader
from client.manifest import Manifest, load_manifest
from client.train import TrainConfig, evaluate, recalibrate_batchnorm, train_local
from models import create_model_for_task
from models.metrics import ScoreSummary, summary_metrics
from server.config import RunConfig
from strategies.history import RoundRecord, RunHistory

__all__ = ["run_local", "run_pooled", "site_manifests"]

_log = logging.getLogger(__name__)

RoundCallback = Callable[[str, RoundRecord], None]


def site_manifests(manifest: Path, sites: Sequence[str], config: RunConfig) -> dict[str, Manifest]:
    """Each site's rows and split, exactly as that site's ClientApp loads them."""
    task = config.task_spec()
    return {site: load_manifest(manifest, task, site=site, seed=config.seed) for site in sites}


def _pooled(manifests: dict[str, Manifest]) -> Manifest:
    first = next(iter(manifests.values()))
    frame = pd.concat([m.frame for m in manifests.values()], ignore_index=True)
    return dataclasses.replace(first, frame=frame, site=None)


def _train_and_track(
    name: str,
    train_on: Manifest,
    evaluate_on: dict[str, Manifest],
    config: RunConfig,
    on_round_end: RoundCallback | None,
    save_to: Path | None = None,
) -> tuple[RunHistory, float]:
    task = config.task_spec()
    torch.manual_seed(config.seed)  # the same initial model as the federation's
    model = create_model_for_task(task, dp_safe=config.uses_dp_model)
    history = RunHistory()
    prepared_train_images: dict = {}  # decoded once for the BatchNorm recalibration passes
    started = time.perf_counter()
    for server_round in range(1, config.num_server_rounds + 1):
        round_started = time.perf_counter()
        loader = make_loader(
            train_on,
            "train",
            batch_size=config.batch_size,
            train=True,
            balanced=config.class_balanced_sampling,
            seed=config.seed + 1000 * server_round,
        )
        result = train_local(
            model,
            loader,
            config=TrainConfig(
                epochs=config.local_epochs,
                learning_rate=config.learning_rate,
                lr_step_epochs=config.lr_step_epochs,
                lr_gamma=config.lr_gamma,
                momentum=config.momentum,
                weight_decay=config.weight_decay,
                focal_gamma=config.focal_gamma,
                start_epoch=(server_round - 1) * config.local_epochs,
                grad_clip_norm=config.grad_clip_norm or None,
            ),
            class_counts=train_on.class_counts("train"),
        )
        if config.bn_recalibration:  # as a site does after its local epochs (client.site)
            rows = make_loader(
                train_on,
                "train",
                batch_size=config.batch_size,
                train=False,
                image_cache=prepared_train_images,
            )
            recalibrate_batchnorm(model, rows)
        record = history.round(server_round)
        record.train[name] = {"num-examples": result.num_examples, "train-loss": result.mean_loss}
        total: ScoreSummary | None = None
        for site, manifest in evaluate_on.items():
            eval_loader = make_loader(
                manifest, config.eval_split, batch_size=max(config.batch_size, 32), train=False
            )
            summary = evaluate(
                model, eval_loader, num_classes=task.num_classes, n_bins=config.score_bins
            ).summary
            record.sites[site] = {**summary_metrics(summary), "n": summary.n}
            total = summary if total is None else total + summary
        if total is not None:
            record.global_metrics = {**summary_metrics(total), "n": total.n}
            record.global_summary = total.to_record()
        record.seconds = time.perf_counter() - round_started
        if on_round_end is not None:
            on_round_end(name, record)
    if save_to is not None:  # the final model, like a federation's global_model.pt
        save_to.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), save_to)
    return history, time.perf_counter() - started


def run_local(
    manifests: dict[str, Manifest],
    config: RunConfig,
    *,
    on_round_end: RoundCallback | None = None,
    save_dir: Path | None = None,
) -> dict[str, tuple[RunHistory, float]]:
    """``local:<site>`` for every site: trained alone, evaluated on every site.

    With ``save_dir``, each final model goes to ``save_dir/<site>/global_model.pt``.
    """
    return {
        f"local:{site}": _train_and_track(
            f"local:{site}",
            manifest,
            manifests,
            config,
            on_round_end,
            save_dir / site / "global_model.pt" if save_dir else None,
        )
        for site, manifest in manifests.items()
    }


def run_pooled(
    manifests: dict[str, Manifest],
    config: RunConfig,
    *,
    on_round_end: RoundCallback | None = None,
    save_to: Path | None = None,
) -> tuple[RunHistory, float]:
    """One model on the union of the sites' training rows, evaluated on every site."""
    return _train_and_track("pooled", _pooled(manifests), manifests, config, on_round_end, save_to)
