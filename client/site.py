"""A site's side of one federated run, as plain Python (the ClientApp only adapts messages).

:class:`SiteSettings` is what the hospital decides (node config: where the data is, who the
site is). :class:`RoundSettings` is what the server asks for (task and optimisation settings
sent with each message). :class:`SiteSession` holds the loaded manifest and model so that a
long-lived process (simulation actors) reuses them across rounds.
"""

from __future__ import annotations

import copy
import logging
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from client.dataset import make_loader
from client.manifest import Manifest, ManifestError, ManifestProblem, load_manifest
from client.privacy import (
    BudgetExhausted,
    PrivacyBudget,
    PrivacyConfigError,
    PrivacyLedger,
    effective_budget,
    make_private,
    plan_noise_multiplier,
)
from client.train import (
    EvalResult,
    TrainConfig,
    TrainResult,
    evaluate,
    recalibrate_batchnorm,
    train_local,
)
from models import create_model_for_task, norm_state_keys
from models.tasks import TaskSpec, get_task

__all__ = [
    "SiteSettings",
    "RoundSettings",
    "SiteSession",
    "SiteConfigError",
    "PrivacyReport",
    "get_session",
    "training_seed",
]

_log = logging.getLogger(__name__)


#: ``cache-images = "auto"`` caches a site's decoded images up to this size (float32).
AUTO_CACHE_BYTES = 1 << 30


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
        budget: the site's DP budget (``dp-epsilon``, ``dp-delta``, ``dp-max-grad-norm``);
            None trains without DP unless the server asks for it.
        cache_images: keep decoded, resized images in memory across rounds
            (``cache-images``: ``"auto"``, ``true`` or ``false``); None = auto: cache when
            the site's images take at most ``AUTO_CACHE_BYTES`` as float32. Default None.
    """

    data_path: Path
    site_id: str
    num_workers: int = 0
    budget: PrivacyBudget | None = None
    cache_images: bool | None = None

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, object]) -> SiteSettings:
        path = node_config.get("data-path")
        if not path:
            raise SiteConfigError(
                "node config has no 'data-path': start the site with "
                '--node-config \'data-path="/path/to/manifest.csv" site-id="name"\''
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
        budget = PrivacyBudget.from_config(node_config, source="node config")
        cache = str(node_config.get("cache-images", "auto")).strip().lower()
        if cache not in ("auto", "true", "false"):
            raise SiteConfigError(f"cache-images must be auto, true or false, got {cache!r}")
        return cls(
            data_path=data_path,
            site_id=site_id,
            num_workers=num_workers,
            budget=budget,
            cache_images=None if cache == "auto" else cache == "true",
        )


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
    num_rounds: int = 1
    dp_safe: bool = False
    dp_requested: PrivacyBudget | None = None
    keep_local_norm: bool = False
    update_dtype: str = "float32"
    bn_recalibration: bool = True

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> RoundSettings:
        def get(key: str, default: object) -> object:
            return config.get(key, default)

        task_json = str(get("task-json", ""))
        base = (
            TaskSpec.from_json(task_json, source="the server's task-json")
            if task_json
            else get_task(str(get("task", "rcc-grading")))
        )
        task = base.replace(
            backbone=str(get("backbone", "")),
            image_size=int(get("image-size", 0)),  # type: ignore[call-overload]
        ).with_model_options(str(get("model-options", "")))
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
            grad_clip_norm=float(get("grad-clip-norm", 0.0)) or None,  # type: ignore[arg-type]
            proximal_mu=float(get("proximal-mu", 0.0)),  # type: ignore[arg-type]
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
            num_rounds=int(get("num-server-rounds", server_round)),  # type: ignore[call-overload]
            dp_safe=bool(get("dp-safe-model", False)),
            dp_requested=PrivacyBudget.from_config(config, source="run config"),
            keep_local_norm=bool(get("keep-local-norm", False)),
            update_dtype=str(get("update-dtype", "float32")),
            bn_recalibration=bool(get("bn-recalibration", True)),
        )


@dataclass(frozen=True)
class PrivacyReport:
    """DP accounting after a round: what the site spent of its budget."""

    epsilon_spent: float
    epsilon_budget: float
    delta: float
    noise_multiplier: float
    max_grad_norm: float


class SiteSession:
    """The site's manifest and model for one task, reused across rounds."""

    def __init__(
        self,
        settings: SiteSettings,
        task: TaskSpec,
        *,
        seed: int = 0,
        dp_safe: bool = False,
        model: nn.Module | None = None,
    ) -> None:
        self.settings = settings
        self.task = task
        self.manifest: Manifest = load_manifest(
            settings.data_path, task, site=settings.site_id or None, seed=seed
        )
        self.site_id = settings.site_id or _infer_site_id(self.manifest)
        self.dp_safe = dp_safe
        # ``model``: an instance to reuse (built for the same task and dp_safe); its weights
        # are whatever the last load_global put there.
        self.model: nn.Module = model or create_model_for_task(task, dp_safe=dp_safe)
        self._image_caches: dict[str, dict[tuple[int, int, int], torch.Tensor]] | None = (
            {} if self._should_cache() else None
        )
        _log.info(
            "site %s: %d rows loaded from %s (decoded-image cache %s)",
            self.site_id,
            len(self.manifest.frame),
            settings.data_path,
            "on" if self._image_caches is not None else "off",
        )

    def _should_cache(self) -> bool:
        if self.settings.cache_images is not None:
            return self.settings.cache_images
        images = len(self.manifest.frame) * len(self.task.modalities)
        side = self.task.image_size
        return images * self.task.in_chans * side * side * 4 <= AUTO_CACHE_BYTES

    def image_cache(self, split: str) -> dict[tuple[int, int, int], torch.Tensor] | None:
        """The decoded images of ``split`` kept across rounds (None when caching is off).

        With ``num-workers`` > 0 each worker process fills its own copy, which is lost when
        the loader ends, so the cache only helps loaders without workers."""
        if self._image_caches is None or self.settings.num_workers:
            return None
        return self._image_caches.setdefault(split, {})

    def load_global(
        self,
        state: Mapping[str, torch.Tensor],
        *,
        local_norm: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        """Load the global weights; ``local_norm`` (FedBN) overrides the normalisation layers."""
        merged = dict(state)
        if local_norm:
            merged.update(local_norm)
        self.model.load_state_dict(merged, strict=True)

    def shareable_state(
        self, *, keep_local_norm: bool
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(what to send, what FedBN keeps here): normalisation entries stay when asked."""
        state = self.model.state_dict()
        if not keep_local_norm:
            return state, {}
        keys = norm_state_keys(self.model)
        kept = {k: v for k, v in state.items() if k in keys}
        return {k: v for k, v in state.items() if k not in keys}, kept

    def require_train_rows(self) -> None:
        """Raise ManifestError when the site has no training rows (an evaluation-only site)."""
        if len(self.manifest.rows("train")) == 0:
            problem = ManifestProblem(
                None,
                "split",
                f"site {self.site_id} was asked to train but its train split has no rows "
                "(an evaluation-only site); give some patients split=train, or leave this "
                "site out of training",
            )
            raise ManifestError(self.manifest.path, [problem])

    def train(self, rounds: RoundSettings) -> TrainResult:
        """Train without DP (the site has no budget and the server asked for none).

        Torch's RNG (dropout, drop-path) is seeded from the run seed, the round and the site,
        so a round trains the same whichever process runs it (simulation actors take sites
        in any order). DP-SGD is not seeded this way: its noise must stay unpredictable.
        """
        self.require_train_rows()
        torch.manual_seed(training_seed(rounds.seed, rounds.server_round, self.site_id))
        loader = make_loader(
            self.manifest,
            "train",
            batch_size=rounds.batch_size,
            train=True,
            balanced=rounds.class_balanced_sampling,
            seed=rounds.seed + 1000 * rounds.server_round,
            num_workers=self.settings.num_workers,
            image_cache=self.image_cache("train"),
        )
        result = train_local(
            self.model,
            loader,
            config=rounds.train,
            class_counts=self.manifest.class_counts("train"),
        )
        if rounds.bn_recalibration:
            self.recalibrate_batchnorm(rounds)
        return result

    def recalibrate_batchnorm(self, rounds: RoundSettings) -> bool:
        """BatchNorm statistics of the trained weights over this site's training rows, as
        they are (no augmentation, no class balancing; see client.train.recalibrate_batchnorm).
        Not for DP-SGD rounds: those models have no BatchNorm (Opacus refuses it)."""
        loader = make_loader(
            self.manifest,
            "train",
            batch_size=rounds.batch_size,
            train=False,
            num_workers=self.settings.num_workers,
            image_cache=self.image_cache("train"),
        )
        return recalibrate_batchnorm(self.model, loader)

    def privacy_budget(self, rounds: RoundSettings) -> PrivacyBudget | None:
        """The budget in force: the stricter of the site's and the server's request."""
        budget = effective_budget(self.settings.budget, rounds.dp_requested)
        if budget is not None and rounds.train.proximal_mu > 0:
            raise PrivacyConfigError(
                f"site {self.site_id} trains with DP-SGD, which clips per-sample gradients; "
                "FedProx' proximal term is not per-sample and would bypass the clipping: "
                "use another strategy for DP runs"
            )
        if budget is not None and not rounds.dp_safe:
            raise PrivacyConfigError(
                f"site {self.site_id} trains only with DP (epsilon {budget.epsilon}), but the "
                "federation's model is not DP-safe: the coordinator must set dp-safe-model=true"
            )
        return budget

    def train_private(
        self, rounds: RoundSettings, budget: PrivacyBudget, ledger: PrivacyLedger
    ) -> tuple[TrainResult, PrivacyReport, PrivacyLedger]:
        """One round of DP-SGD; declines (BudgetExhausted) if it would overspend the budget.

        The noise multiplier is planned once for the whole run (rounds x local epochs), so
        every round spends the same share; a site joining with a smaller budget than planned
        for still stops when its own budget is reached.
        """
        self.require_train_rows()
        # Uniform Poisson sampling: the accounting assumes every row has the same rate.
        loader = make_loader(
            self.manifest,
            "train",
            batch_size=rounds.batch_size,
            train=True,
            balanced=False,
            seed=rounds.seed + 1000 * rounds.server_round,
            num_workers=self.settings.num_workers,
            image_cache=self.image_cache("train"),
        )
        # Opacus samples each row with rate 1 / len(loader) for len(loader) steps per epoch;
        # plan with exactly the numbers its accountant will record.
        steps_per_epoch = len(loader)
        if steps_per_epoch == 0:
            raise PrivacyConfigError(f"site {self.site_id} has no training rows")
        sample_rate = 1 / steps_per_epoch
        round_steps = steps_per_epoch * rounds.local_epochs
        if budget.noise_multiplier is not None:  # the site fixed its noise; epsilon is the cap
            noise = budget.noise_multiplier
        else:
            noise = plan_noise_multiplier(
                budget, sample_rate=sample_rate, total_steps=round_steps * rounds.num_rounds
            )
        if noise > budget.max_noise_multiplier and budget.noise_multiplier is None:
            raise BudgetExhausted(
                f"site {self.site_id} declines round {rounds.server_round}: a budget of epsilon "
                f"{budget.epsilon:g} over {rounds.num_rounds} rounds needs noise multiplier "
                f"{noise:.1f}, above the site's limit {budget.max_noise_multiplier:g} "
                "(dp-max-noise-multiplier): the update would be mostly noise"
            )
        projected = ledger.after(noise, sample_rate, round_steps).spent(budget.delta)
        if projected > budget.epsilon * (1 + 1e-3):
            raise BudgetExhausted(
                f"site {self.site_id} declines round {rounds.server_round}: it would bring "
                f"epsilon to {projected:.3f}, above the site's budget {budget.epsilon:g} "
                f"(spent so far {ledger.spent(budget.delta):.3f}, delta {budget.delta:g})"
            )
        # No training_seed here: DP noise drawn from a seed the server knows would not protect
        # anyone from the server. DP-SGD rounds are therefore not repeatable on resume.
        work = copy.deepcopy(self.model)  # Opacus adds hooks; keep the session's model clean
        optimizer = torch.optim.SGD(
            work.parameters(),
            lr=rounds.train.learning_rate,
            momentum=rounds.train.momentum,
            weight_decay=rounds.train.weight_decay,
        )
        private, optimizer, loader, engine = make_private(
            work, optimizer, loader, noise_multiplier=noise, max_grad_norm=budget.max_grad_norm
        )
        result = train_local(
            private,
            loader,
            config=rounds.train,
            class_counts=self.manifest.class_counts("train"),
            optimizer=optimizer,
        )
        self.model.load_state_dict(work.state_dict())
        ledger = PrivacyLedger([*ledger.history, *engine.accountant.history])
        report = PrivacyReport(
            epsilon_spent=ledger.spent(budget.delta),
            epsilon_budget=budget.epsilon,
            delta=budget.delta,
            noise_multiplier=noise,
            max_grad_norm=budget.max_grad_norm,
        )
        _log.info(
            "site %s: DP round %d spent epsilon %.3f of %g (noise %.3f)",
            self.site_id,
            rounds.server_round,
            report.epsilon_spent,
            budget.epsilon,
            noise,
        )
        return result, report, ledger

    def evaluate(self, rounds: RoundSettings) -> EvalResult:
        loader = make_loader(
            self.manifest,
            rounds.eval_split,
            batch_size=max(rounds.batch_size, 32),
            train=False,
            num_workers=self.settings.num_workers,
            image_cache=self.image_cache(rounds.eval_split),
        )
        return evaluate(
            self.model, loader, num_classes=self.task.num_classes, n_bins=rounds.score_bins
        )


def training_seed(seed: int, server_round: int, site_id: str) -> int:
    """The torch seed of one site's local training in one round (dropout and other random
    layers): the same run seed, round and site train identically, so a resumed run repeats an
    uninterrupted one."""
    return (seed * 1_000_003 + server_round * 7_919 + zlib.crc32(site_id.encode())) % 2**63


def _infer_site_id(manifest: Manifest) -> str:
    frame = manifest.frame
    if "site" in frame.columns:
        sites = sorted(set(frame["site"].astype(str)))
        if len(sites) == 1:
            return sites[0]
    return Path(manifest.path).parent.name or "site"


# One process may serve several sites (a simulation actor takes whichever site's message comes
# next): keep each site's session (manifest, decoded images) and share one model per task,
# which every message overwrites with the global weights anyway.
_MAX_SESSIONS = 64
_SESSIONS: OrderedDict[tuple[object, ...], SiteSession] = OrderedDict()
_MODELS: dict[tuple[object, ...], nn.Module] = {}


def get_session(settings: SiteSettings, rounds: RoundSettings) -> SiteSession:
    """A cached session for this site and task (a long-lived process reuses it across rounds)."""
    torch.set_num_threads(rounds.threads)
    key = (settings, rounds.task, rounds.seed, rounds.dp_safe)
    session = _SESSIONS.get(key)
    if session is not None:
        _SESSIONS.move_to_end(key)
        return session
    model_key = (rounds.task, rounds.dp_safe)
    if model_key not in _MODELS:
        _MODELS.clear()  # one task at a time per process: free the previous model
        _SESSIONS.clear()
        _MODELS[model_key] = create_model_for_task(rounds.task, dp_safe=rounds.dp_safe)
    session = SiteSession(
        settings, rounds.task, seed=rounds.seed, dp_safe=rounds.dp_safe, model=_MODELS[model_key]
    )
    _SESSIONS[key] = session
    while len(_SESSIONS) > _MAX_SESSIONS:
        _SESSIONS.popitem(last=False)
    return session
