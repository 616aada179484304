"""A site's side of one federated run, as plain Python (the ClientApp only adapts messages).

:class:`SiteSettings` is what the hospital decides (node config: where the data is, who the
site is). :class:`RoundSettings` is what the server asks for (task and optimisation settings
sent with each message). :class:`SiteSession` holds the loaded manifest and model so that a
long-lived process (simulation actors) reuses them across rounds.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from client.dataset import make_loader
from client.manifest import Manifest, load_manifest
from client.train import EvalResult, TrainConfig, TrainResult, evaluate, train_local
from models import create_model_for_task
from models.tasks import TaskSpec, get_task

__all__ = ["SiteSettings", "RoundSettings", "SiteSession", "SiteConfigError", "get_session"]

_log = logging.getLogger(__name__)


class SiteConfigError(ValueError):
    """The site's node config is missing a key or has a bad value."""


@dataclass(frozen=True)
class SiteSettings:
    """Settings owned by the site (Flower node config).

    Args:
        data_path: the site's manifest CSV (``data-path``).
        site_id: the site's name (``site-id``); defaults to the manifest's only ``site``
            value, else the manifest folder's name.
        num_workers: data-loader worker processes (``num-workers``). Default 0.
    """

    data_path: Path
    site_id: str
    num_workers: int = 0

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, object]) -> SiteSettings:
        path = node_config.get("data-path")
        if not path:
            raise SiteConfigError(
                "node config has no 'data-path': start the site with "
                "--node-config 'data-path=\"/path/to/manifest.csv\" site-id=\"name\"'"
            )
        data_path = Path(str(path)).expanduser()
        if not data_path.is_file():
            raise SiteConfigError(f"data-path {str(data_path)!r} is not a file")
        site_id = str(node_config.get("site-id") or "")
        try:
            num_workers = int(node_config.get("num-workers", 0))  # type: ignore[call-overload]
        except (TypeError, ValueError) as err:
            raise SiteConfigError(
                f"num-workers must be an integer, got {node_config.get('num-workers')!r}"
            ) from err
        return cls(data_path=data_path, site_id=site_id, num_workers=num_workers)


@dataclass(frozen=True)
class RoundSettings:
    """What the server asks for in a message's config record."""

    task: TaskSpec
    server_round: int
    local_epochs: int
    batch_size: int
    train: TrainConfig
    class_balanced_sampling: bool
    seed: int
    score_bins: int
    eval_split: str
    threads: int

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> RoundSettings:
        def get(key: str, default: object) -> object:
            return config.get(key, default)

        task = get_task(str(get("task", "rcc-grading"))).replace(
            backbone=str(get("backbone", "")), image_size=int(get("image-size", 0))  # type: ignore[call-overload]
        )
        server_round = int(get("server-round", 1))  # type: ignore[call-overload]
        epochs = int(get("local-epochs", 1))  # type: ignore[call-overload]
        train = TrainConfig(
            epochs=epochs,
            learning_rate=float(get("learning-rate", 0.05)),  # type: ignore[arg-type]
            lr_step_epochs=int(get("lr-step-epochs", 10)),  # type: ignore[call-overload]
            lr_gamma=float(get("lr-gamma", 0.5)),  # type: ignore[arg-type]
            momentum=float(get("momentum", 0.9)),  # type: ignore[arg-type]
            weight_decay=float(get("weight-decay", 1e-4)),  # type: ignore[arg-type]
            focal_gamma=float(get("focal-gamma", 2.0)),  # type: ignore[arg-type]
            start_epoch=(server_round - 1) * epochs,
        )
        return cls(
            task=task,
            server_round=server_round,
            local_epochs=epochs,
            batch_size=int(get("batch-size", 16)),  # type: ignore[call-overload]
            train=train,
            class_balanced_sampling=bool(get("class-balanced-sampling", True)),
            seed=int(get("seed", 0)),  # type: ignore[call-overload]
            score_bins=int(get("score-bins", 50)),  # type: ignore[call-overload]
            eval_split=str(get("eval-split", "test")),
            threads=int(get("client-threads", 1)),  # type: ignore[call-overload]
        )


class SiteSession:
    """The site's manifest and model for one task, reused across rounds."""

    def __init__(self, settings: SiteSettings, task: TaskSpec, *, seed: int = 0) -> None:
        self.settings = settings
        self.task = task
        self.manifest: Manifest = load_manifest(
            settings.data_path, task, site=settings.site_id or None, seed=seed
        )
        self.site_id = settings.site_id or _infer_site_id(self.manifest)
        self.model: nn.Module = create_model_for_task(task)
        _log.info(
            "site %s: %d rows loaded from %s", self.site_id, len(self.manifest.frame), settings.data_path
        )

    def load_global(self, state: Mapping[str, torch.Tensor]) -> None:
        self.model.load_state_dict(dict(state), strict=True)

    def train(self, rounds: RoundSettings) -> TrainResult:
        loader = make_loader(
            self.manifest,
            "train",
            batch_size=rounds.batch_size,
            train=True,
            balanced=rounds.class_balanced_sampling,
            seed=rounds.seed + 1000 * rounds.server_round,
            num_workers=self.settings.num_workers,
        )
        return train_local(
            self.model,
            loader,
            config=rounds.train,
            class_counts=self.manifest.class_counts("train"),
        )

    def evaluate(self, rounds: RoundSettings) -> EvalResult:
        loader = make_loader(
            self.manifest,
            rounds.eval_split,
            batch_size=max(rounds.batch_size, 32),
            train=False,
            num_workers=self.settings.num_workers,
        )
        return evaluate(
            self.model, loader, num_classes=self.task.num_classes, n_bins=rounds.score_bins
        )


def _infer_site_id(manifest: Manifest) -> str:
    frame = manifest.frame
    if "site" in frame.columns:
        sites = sorted(set(frame["site"].astype(str)))
        if len(sites) == 1:
            return sites[0]
    return Path(manifest.path).parent.name or "site"


_SESSIONS: dict[tuple[object, ...], SiteSession] = {}


def get_session(settings: SiteSettings, rounds: RoundSettings) -> SiteSession:
    """A cached session for this site and task (a long-lived process reuses it across rounds)."""
    torch.set_num_threads(rounds.threads)
    key = (settings, rounds.task, rounds.seed)
    session = _SESSIONS.get(key)
    if session is None:
        session = SiteSession(settings, rounds.task, seed=rounds.seed)
        _SESSIONS.clear()  # one run at a time per process: free the previous model
        _SESSIONS[key] = session
    return session
