"""Per-row test scores of final models, for paired statistics (DeLong) in a simulation.

A federation's metrics come from what sites share (score histograms, counts). A paired test
of two models needs each test row's score under both models, which only the row's own site
may see. A simulation holds every site's rows, so after training the runner re-scores each
final model on each site's test rows here, outside Flower, through the same loading path a
site uses (its own split, its own clinical feature transform). A real federation would run
the comparison at each site and share only the test statistic.

FedBN has no single final model (each site keeps its own normalisation layers), so it is
not re-scored.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from client.dataset import make_loader
from client.train import predict
from models import create_model_for_task
from server.config import RunConfig
from simulation.baselines import site_manifests

__all__ = ["SiteScores", "score_model"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiteScores:
    """One site's test rows: true class ``labels`` (N,) and class probabilities ``probs`` (N, K)."""

    labels: np.ndarray
    probs: np.ndarray


def score_model(
    manifest: Path,
    sites: Sequence[str],
    run_config: Mapping[str, object],
    model_path: Path,
) -> dict[str, SiteScores]:
    """Scores of the model saved at ``model_path`` on every site's evaluation rows.

    Args:
        manifest: the multi-site manifest the model was trained on.
        sites: the sites to score, in order.
        run_config: the run config the model was trained with (task, seed, backbone, ...).
        model_path: a state dict written by the runner (``global_model.pt``).
    """
    config = RunConfig.from_mapping(run_config)
    task = config.task_spec()
    torch.manual_seed(config.seed)
    model = create_model_for_task(task, dp_safe=config.uses_dp_model)
    model.load_state_dict(torch.load(model_path, map_location="cpu", weights_only=True))
    out: dict[str, SiteScores] = {}
    for site, site_manifest in site_manifests(manifest, sites, config).items():
        loader = make_loader(
            site_manifest, config.eval_split, batch_size=max(config.batch_size, 32), train=False
        )
        labels, probs, _ = predict(model, loader)
        if labels.size == 0:
            probs = np.zeros((0, task.num_classes))
        out[site] = SiteScores(labels=labels, probs=probs)
    _log.info("scored %s on %d sites", model_path, len(out))
    return out
