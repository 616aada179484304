"""The run configuration: read once from Flower's run config into a typed, frozen object.

Flower passes ``[tool.flwr.app.config]`` (plus ``--run-config`` overrides) as a flat dict of
bool/int/float/str. Only :func:`RunConfig.from_mapping` reads that dict; everything else uses
the typed fields.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from models.tasks import TaskSpec, get_task
from server.config_checks import misspelt_keys, option_problems
from server.secagg_config import secagg_problems

__all__ = ["RunConfig", "RunConfigError", "CLIENT_KEYS", "UPDATE_DTYPES"]

_log = logging.getLogger(__name__)

# Names of strategies.factory.STRATEGIES (kept here so the config does not import Flower).
_STRATEGY_NAMES = ("fedavg", "fedprox", "fedbn", "fedadam", "fedyogi")
_ROBUST_NAMES = ("fedmedian", "fedtrimmedavg", "krum")  # robust aggregation (issue 8)
_STRATEGY_NAMES += _ROBUST_NAMES


class RunConfigError(ValueError):
    """A run configuration value is missing, of the wrong type or out of range."""


# Keys sent to every site with each train/evaluate message (the site reads them in client.app).
CLIENT_KEYS = (
    "task",
    "task-json",
    "backbone",
    "image-size",
    "local-epochs",
    "batch-size",
    "learning-rate",
    "lr-step-epochs",
    "lr-gamma",
    "momentum",
    "weight-decay",
    "focal-gamma",
    "grad-clip-norm",
    "bn-recalibration",
    "class-balanced-sampling",
    "seed",
    "score-bins",
    "eval-split",
    "client-threads",
    "num-server-rounds",
    "dp-safe-model",
    "dp-epsilon",
    "dp-delta",
    "dp-max-grad-norm",
    "model-options",
    "update-dtype",
)

#: ``update-dtype`` values: how sites encode their train replies (docs/performance.md).
UPDATE_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class RunConfig:
    """Typed view of the run config (kebab-case keys map to snake_case fields)."""

    task: str = "rcc-grading"
    # An ad-hoc task's full definition (TaskSpec.to_json(), e.g. a task.json written by
    # `fedfusion simulate --model ...`); when set it replaces the preset named by `task`.
    task_json: str = ""
    backbone: str = ""
    image_size: int = 0
    model_options: str = ""  # "key=value ..." over the task's model_kwargs (e.g. "top_k=2")
    num_server_rounds: int = 3
    local_epochs: int = 1
    batch_size: int = 16
    learning_rate: float = 0.05
    lr_step_epochs: int = 10
    lr_gamma: float = 0.5
    momentum: float = 0.9
    weight_decay: float = 1e-4
    focal_gamma: float = 2.0
    grad_clip_norm: float = 0.0
    # Recompute BatchNorm statistics over the site's training rows after local training
    # (client.train.recalibrate_batchnorm); off = keep the running averages as trained.
    bn_recalibration: bool = True
    class_balanced_sampling: bool = True
    fraction_train: float = 1.0
    min_train_nodes: int = 2
    min_available_nodes: int = 2
    round_timeout: float = 3600.0
    seed: int = 0
    score_bins: int = 50
    eval_split: str = "test"
    client_threads: int = 1
    # Local DP requested by the server: a site applies the stricter of this and its own budget.
    dp_epsilon: float = 0.0  # 0 = the server asks for no DP
    dp_delta: float = 1e-5
    dp_max_grad_norm: float = 1.0
    dp_safe_model: bool = False  # GroupNorm model so that sites with a DP budget can train
    # Central (site-level) DP: sites clip updates, the server adds noise; 0 = off.
    central_dp_noise_multiplier: float = 0.0
    central_dp_clipping_norm: float = 1.0
    central_dp_delta: float = 1e-5
    # Secure aggregation (Flower's SecAgg+): the server sees only the sum of the updates.
    secagg: bool = False
    secagg_num_shares: int = 0  # 0 = every sampled site; else an odd number >= 3
    secagg_reconstruction_threshold: float = 0.66  # fraction of the shares (> 0.5), or a count
    secagg_clipping_range: float = 8.0  # each value (update x examples / max-weight) is clipped
    secagg_quantization_range: int = 4194304  # 2**22 integer levels over the clipping range
    secagg_max_weight: float = 1000.0  # the most examples one site may weigh in with
    strategy: str = "fedavg"  # fedavg | fedprox | fedbn | fedadam | fedyogi
    # float16: sites send (new - global) in half precision, the server adds it back (half
    # the bytes); float32: sites send their weights as they are.
    update_dtype: str = "float32"
    proximal_mu: float = 0.01  # FedProx
    server_lr: float = 0.01  # FedAdam / FedYogi server learning rate
    out_dir: str = ""
    db_url: str = ""  # run store (SQLAlchemy URL or SQLite path); "" = no store
    run_name: str = ""  # the run's label in the run store and dashboard
    # Reliability (docs/reliability.md)
    min_answers: int = 1  # fewest usable updates that make a round; fewer keep the model
    update_norm_factor: float = 10.0  # reject updates > this x the round's median norm; 0 = off
    trim_beta: float = 0.2  # fedtrimmedavg: fraction cut at each end
    krum_malicious: int = 1  # krum: sites assumed malicious (f)
    resume_run: str = ""  # continue this run: its out-dir, or its id in the run store at db-url

    @classmethod
    def from_mapping(cls, raw: Mapping[str, object]) -> RunConfig:
        """Build from Flower's flat run config; unknown keys are ignored with a warning.

        Raises:
            RunConfigError: listing every bad value at once.
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, object] = {}
        problems: list[str] = []
        for key, value in raw.items():
            name = key.replace("-", "_")
            if name not in fields:
                if not key.startswith(("sim-", "num-workers", "poison-")):
                    _log.debug("run config key %r is not used by the server", key)
                continue
            default = fields[name].default
            try:
                values[name] = _coerce(value, type(default))
            except (TypeError, ValueError):
                problems.append(f"{key}: expected {type(default).__name__}, got {value!r}")
        misspelt = misspelt_keys(raw, {name.replace("_", "-") for name in fields})
        if problems:
            raise RunConfigError("invalid run config: " + "; ".join(problems + misspelt))
        config = cls(**values)  # type: ignore[arg-type]
        try:
            config.validate()
        except RunConfigError as err:
            if not misspelt:
                raise
            raise RunConfigError(f"{err}; " + "; ".join(misspelt)) from None
        if misspelt:
            raise RunConfigError("invalid run config: " + "; ".join(misspelt))
        return config

    def validate(self) -> None:
        """Check ranges; raise one RunConfigError naming every bad value."""
        checks = [
            (
                self.num_server_rounds >= 1,
                f"num-server-rounds must be >= 1, got {self.num_server_rounds}",
            ),
            (self.local_epochs >= 1, f"local-epochs must be >= 1, got {self.local_epochs}"),
            (self.batch_size >= 1, f"batch-size must be >= 1, got {self.batch_size}"),
            (self.learning_rate > 0, f"learning-rate must be > 0, got {self.learning_rate}"),
            (self.lr_step_epochs >= 1, f"lr-step-epochs must be >= 1, got {self.lr_step_epochs}"),
            (0 < self.lr_gamma <= 1, f"lr-gamma must be in (0, 1], got {self.lr_gamma}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"weight-decay must be >= 0, got {self.weight_decay}"),
            (
                self.focal_gamma == 0 or self.focal_gamma >= 1,
                "focal-gamma must be 0 or >= 1 (0 < gamma < 1 has unbounded gradients), "
                f"got {self.focal_gamma}",
            ),
            (
                self.grad_clip_norm >= 0,
                f"grad-clip-norm must be >= 0 (0 = off), got {self.grad_clip_norm}",
            ),
            (
                0 < self.fraction_train <= 1,
                f"fraction-train must be in (0, 1], got {self.fraction_train}",
            ),
            (
                self.min_train_nodes >= 1,
                f"min-train-nodes must be >= 1, got {self.min_train_nodes}",
            ),
            (
                self.min_available_nodes >= 1,
                f"min-available-nodes must be >= 1, got {self.min_available_nodes}",
            ),
            (self.round_timeout > 0, f"round-timeout must be > 0, got {self.round_timeout}"),
            (
                2 <= self.score_bins <= 1000,
                f"score-bins must be in [2, 1000], got {self.score_bins}",
            ),
            (
                self.eval_split in ("val", "test"),
                f"eval-split must be 'val' or 'test', got {self.eval_split!r}",
            ),
            (self.dp_epsilon >= 0, f"dp-epsilon must be >= 0 (0 = no DP), got {self.dp_epsilon}"),
            (0 < self.dp_delta < 1, f"dp-delta must be in (0, 1), got {self.dp_delta}"),
            (
                self.dp_max_grad_norm > 0,
                f"dp-max-grad-norm must be > 0, got {self.dp_max_grad_norm}",
            ),
            (
                self.central_dp_noise_multiplier >= 0,
                "central-dp-noise-multiplier must be >= 0 (0 = off), "
                f"got {self.central_dp_noise_multiplier}",
            ),
            (
                self.central_dp_clipping_norm > 0,
                f"central-dp-clipping-norm must be > 0, got {self.central_dp_clipping_norm}",
            ),
            (
                0 < self.central_dp_delta < 1,
                f"central-dp-delta must be in (0, 1), got {self.central_dp_delta}",
            ),
            (self.client_threads >= 1, f"client-threads must be >= 1, got {self.client_threads}"),
            (
                self.image_size == 0 or self.image_size >= 16,
                f"image-size must be 0 (task default) or >= 16, got {self.image_size}",
            ),
        ]
        problems = [message for ok, message in checks if not ok]
        problems += option_problems(self, strategies=_STRATEGY_NAMES)  # names, combinations
        if self.min_answers < 1:
            problems.append(f"min-answers must be >= 1, got {self.min_answers}")
        if not (self.update_norm_factor == 0 or self.update_norm_factor > 1):
            problems.append(
                f"update-norm-factor must be 0 (off) or > 1, got {self.update_norm_factor}"
            )
        if not 0 <= self.trim_beta < 0.5:
            problems.append(f"trim-beta must be in [0, 0.5), got {self.trim_beta}")
        if self.krum_malicious < 0:
            problems.append(f"krum-malicious must be >= 0, got {self.krum_malicious}")
        if self.strategy in _ROBUST_NAMES and self.update_dtype != "float32":
            problems.append(
                f"strategy {self.strategy} needs update-dtype float32: it aggregates the sites' "
                "weights, not the float16 differences that update-dtype float16 sends"
            )
        if self.strategy in _ROBUST_NAMES and self.central_dp:
            problems.append(
                f"strategy {self.strategy} cannot run with central DP: the DP noise is "
                "calibrated for a plain mean of clipped updates"
            )
        if self.proximal_mu < 0:
            problems.append(f"proximal-mu must be >= 0, got {self.proximal_mu}")
        if self.server_lr <= 0:
            problems.append(f"server-lr must be > 0, got {self.server_lr}")
        if self.strategy == "fedbn" and self.central_dp:
            problems.append(
                "strategy fedbn cannot run with central DP: the DP wrapper needs every site to "
                "send the same arrays, FedBN keeps normalisation layers local"
            )
        problems += secagg_problems(self)
        if self.update_dtype not in UPDATE_DTYPES:
            problems.append(
                f"update-dtype must be one of {', '.join(UPDATE_DTYPES)}, got {self.update_dtype!r}"
            )
        elif self.update_dtype != "float32" and (self.central_dp or self.secagg):
            problems.append(
                f"update-dtype {self.update_dtype} sends weight differences, which central DP's "
                "clipping and secure aggregation do not expect: use update-dtype float32"
            )
        if self.strategy == "fedprox" and self.proximal_mu == 0:
            _log.warning("strategy fedprox with proximal-mu 0 is FedAvg")
        try:
            self._base_task().with_model_options(self.model_options)
        except ValueError as err:
            problems.append(str(err))
        if problems:
            raise RunConfigError("invalid run config: " + "; ".join(problems))

    def _base_task(self) -> TaskSpec:
        if self.task_json:
            return TaskSpec.from_json(self.task_json, source="run config task-json")
        return get_task(self.task)

    def task_spec(self) -> TaskSpec:
        """The task (the preset, or the ad-hoc ``task-json``) with this run's backbone /
        image-size overrides and ``model-options`` applied."""
        task = self._base_task().replace(backbone=self.backbone, image_size=self.image_size)
        return task.with_model_options(self.model_options)

    @property
    def uses_dp_model(self) -> bool:
        """Whether the global model is built DP-safe (asked for, or implied by DP)."""
        return self.dp_safe_model or self.dp_epsilon > 0 or self.central_dp

    @property
    def central_dp(self) -> bool:
        return self.central_dp_noise_multiplier > 0

    def client_config(self) -> dict[str, bool | int | float | str]:
        """The settings every site receives with each message (Flower ConfigRecord values)."""
        out: dict[str, bool | int | float | str] = {}
        for key in CLIENT_KEYS:
            out[key] = getattr(self, key.replace("-", "_"))
        out["dp-safe-model"] = self.uses_dp_model
        return out

    def to_dict(self) -> dict[str, object]:
        """Kebab-case keys, as in the run config; a password in ``db-url`` is hidden."""
        out = {f.name.replace("_", "-"): getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.db_url:
            from server.store import redact_url

            out["db-url"] = redact_url(self.db_url) if "://" in self.db_url else self.db_url
        return out


def _coerce(value: object, kind: type) -> object:
    """Convert a run-config value to the field's type (ints are accepted for floats)."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ValueError(value)
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise TypeError(value)
        return int(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise TypeError(value)
        return float(value)
    if kind is str:
        return str(value)
    raise TypeError(kind)
