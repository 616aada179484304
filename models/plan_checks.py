"""Checks of a training plan: ranges, names and refused combinations (no Flower import).

Each check returns readable problems (empty when all is well) so that a plan lists every
problem at once; :meth:`models.plan.TrainingPlan.validate` raises them as one PlanError.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING

from models._options import UnknownOptionError, look_up_option
from models.plan_secagg import secagg_problems

if TYPE_CHECKING:
    from models.plan import TrainingPlan

__all__ = [
    "STRATEGY_NAMES",
    "ROBUST_STRATEGIES",
    "UPDATE_DTYPES",
    "coerce",
    "misspelt_keys",
    "plan_problems",
]

_log = logging.getLogger(__name__)

#: Strategy names the server knows (strategies.factory builds them).
ROBUST_STRATEGIES = ("fedmedian", "fedtrimmedavg", "krum")
STRATEGY_NAMES = ("fedavg", "fedprox", "fedbn", "fedadam", "fedyogi", *ROBUST_STRATEGIES)
#: ``update-dtype`` values: how sites encode their train replies (docs/performance.md).
UPDATE_DTYPES = ("float32", "float16")

# Run-config keys other parts of the app read (not plan keys, not misspellings of one).
_OTHER_PREFIXES = ("sim-", "num-workers", "poison-")


def plan_problems(plan: TrainingPlan) -> list[str]:
    """Every problem with ``plan``."""
    from models.plan import PLAN_VERSION

    p = plan
    checks = [
        (
            p.plan_version == PLAN_VERSION,
            f"plan-version must be {PLAN_VERSION}, got {p.plan_version}",
        ),
        (p.num_server_rounds >= 1, f"num-server-rounds must be >= 1, got {p.num_server_rounds}"),
        (p.local_epochs >= 1, f"local-epochs must be >= 1, got {p.local_epochs}"),
        (p.batch_size >= 1, f"batch-size must be >= 1, got {p.batch_size}"),
        (p.learning_rate > 0, f"learning-rate must be > 0, got {p.learning_rate}"),
        (p.lr_step_epochs >= 1, f"lr-step-epochs must be >= 1, got {p.lr_step_epochs}"),
        (0 < p.lr_gamma <= 1, f"lr-gamma must be in (0, 1], got {p.lr_gamma}"),
        (0 <= p.momentum < 1, f"momentum must be in [0, 1), got {p.momentum}"),
        (p.weight_decay >= 0, f"weight-decay must be >= 0, got {p.weight_decay}"),
        (
            p.focal_gamma == 0 or p.focal_gamma >= 1,
            "focal-gamma must be 0 or >= 1 (0 < gamma < 1 has unbounded gradients), "
            f"got {p.focal_gamma}",
        ),
        (p.grad_clip_norm >= 0, f"grad-clip-norm must be >= 0 (0 = off), got {p.grad_clip_norm}"),
        (0 < p.fraction_train <= 1, f"fraction-train must be in (0, 1], got {p.fraction_train}"),
        (p.min_train_nodes >= 1, f"min-train-nodes must be >= 1, got {p.min_train_nodes}"),
        (
            p.min_available_nodes >= 1,
            f"min-available-nodes must be >= 1, got {p.min_available_nodes}",
        ),
        (p.round_timeout > 0, f"round-timeout must be > 0, got {p.round_timeout}"),
        (2 <= p.score_bins <= 1000, f"score-bins must be in [2, 1000], got {p.score_bins}"),
        (
            p.eval_split in ("val", "test"),
            f"eval-split must be 'val' or 'test', got {p.eval_split!r}",
        ),
        (p.dp_epsilon >= 0, f"dp-epsilon must be >= 0 (0 = no DP), got {p.dp_epsilon}"),
        (0 < p.dp_delta < 1, f"dp-delta must be in (0, 1), got {p.dp_delta}"),
        (p.dp_max_grad_norm > 0, f"dp-max-grad-norm must be > 0, got {p.dp_max_grad_norm}"),
        (
            p.central_dp_noise_multiplier >= 0,
            "central-dp-noise-multiplier must be >= 0 (0 = off), "
            f"got {p.central_dp_noise_multiplier}",
        ),
        (
            p.central_dp_clipping_norm > 0,
            f"central-dp-clipping-norm must be > 0, got {p.central_dp_clipping_norm}",
        ),
        (
            0 < p.central_dp_delta < 1,
            f"central-dp-delta must be in (0, 1), got {p.central_dp_delta}",
        ),
        (p.client_threads >= 1, f"client-threads must be >= 1, got {p.client_threads}"),
        (
            p.image_size == 0 or p.image_size >= 16,
            f"image-size must be 0 (task default) or >= 16, got {p.image_size}",
        ),
        (p.min_answers >= 1, f"min-answers must be >= 1, got {p.min_answers}"),
        (
            p.max_site_examples >= 1,
            f"max-site-examples must be >= 1, got {p.max_site_examples}",
        ),
        (
            p.update_norm_factor == 0 or p.update_norm_factor > 1,
            f"update-norm-factor must be 0 (off) or > 1, got {p.update_norm_factor}",
        ),
        (0 <= p.trim_beta < 0.5, f"trim-beta must be in [0, 0.5), got {p.trim_beta}"),
        (p.krum_malicious >= 0, f"krum-malicious must be >= 0, got {p.krum_malicious}"),
        (p.proximal_mu >= 0, f"proximal-mu must be >= 0, got {p.proximal_mu}"),
        (p.server_lr > 0, f"server-lr must be > 0, got {p.server_lr}"),
        (
            not p.app_hash or _is_sha256(p.app_hash),
            f"app-hash must be '' or a SHA-256 hex digest, got {p.app_hash!r}",
        ),
    ]
    problems = [message for ok, message in checks if not ok]
    problems += _option_problems(p)
    problems += _combination_problems(p)
    problems += secagg_problems(p)
    try:
        p.task_spec()
    except ValueError as err:
        problems.append(str(err))
    return problems


def _option_problems(plan: TrainingPlan) -> list[str]:
    """Unknown strategy / backbone / update-dtype names (with "did you mean")."""
    problems: list[str] = []
    try:
        look_up_option("strategy", plan.strategy, STRATEGY_NAMES)
    except UnknownOptionError as err:
        problems.append(f"strategy: {err}")
    if plan.backbone:
        problem = _backbone_problem(plan.backbone)
        if problem:
            problems.append(f"backbone: {problem}")
    if plan.update_dtype not in UPDATE_DTYPES:
        problems.append(
            f"update-dtype must be one of {', '.join(UPDATE_DTYPES)}, got {plan.update_dtype!r}"
        )
    return problems


def _combination_problems(plan: TrainingPlan) -> list[str]:
    """Settings that are each fine but cannot run together."""
    problems: list[str] = []
    if plan.strategy == "fedprox" and plan.dp_epsilon > 0:
        problems.append(
            "strategy fedprox cannot run with local DP (dp-epsilon > 0): DP-SGD clips "
            "per-sample gradients and FedProx' proximal term is not per-sample, so it would "
            "bypass the clipping; use fedavg, fedadam or fedyogi for DP runs"
        )
    robust = plan.strategy in ROBUST_STRATEGIES
    if robust and plan.update_dtype != "float32":
        problems.append(
            f"strategy {plan.strategy} needs update-dtype float32: it aggregates the sites' "
            "weights, not the float16 differences that update-dtype float16 sends"
        )
    if robust and plan.central_dp:
        problems.append(
            f"strategy {plan.strategy} cannot run with central DP: the DP noise is "
            "calibrated for a plain mean of clipped updates"
        )
    if plan.strategy == "fedbn" and plan.central_dp:
        problems.append(
            "strategy fedbn cannot run with central DP: the DP wrapper needs every site to "
            "send the same arrays, FedBN keeps normalisation layers local"
        )
    if plan.update_dtype != "float32" and (plan.central_dp or plan.secagg):
        problems.append(
            f"update-dtype {plan.update_dtype} sends weight differences, which central DP's "
            "clipping and secure aggregation do not expect: use update-dtype float32"
        )
    if plan.strategy == "fedprox" and plan.proximal_mu == 0:
        _log.warning("strategy fedprox with proximal-mu 0 is FedAvg")
    return problems


def misspelt_keys(keys: Iterable[str], fields: Collection[str]) -> list[str]:
    """Keys that are not settings but close to one (kebab-case ``fields``)."""
    problems = []
    for key in keys:
        if key in fields or key.startswith(_OTHER_PREFIXES):
            continue
        close = difflib.get_close_matches(key, sorted(fields), n=3, cutoff=0.8)
        if close:
            problems.append(
                f"unknown run config key {key!r}. Did you mean {', '.join(repr(c) for c in close)}?"
            )
    return problems


def coerce(value: object, kind: type) -> object:
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
        number = float(value)
        if number != number or number in (float("inf"), float("-inf")):
            raise ValueError(value)
        return number
    if kind is str:
        return str(value)
    raise TypeError(kind)


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def _backbone_problem(name: str) -> str | None:
    """Why ``name`` is not a timm model (with "did you mean"), or None."""
    import timm

    arch = name.split(".", 1)[0]  # "resnet18.a1_in1k": architecture + pretrained tag
    if timm.is_model(arch):
        return None
    close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return (
        f"unknown backbone {name!r}: not a timm model.{hint} "
        f"List candidates with timm.list_models('*{arch[:6]}*')"
    )
