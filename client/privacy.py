"""Sample-level differential privacy for a site's local training (Opacus), as plain Python.

The site owns its budget: ``dp-epsilon``, ``dp-delta`` and ``dp-max-grad-norm`` come from the
site's node config. The server may ask for DP too, but :func:`effective_budget` always takes
the stricter of the two values, so a run config can tighten a site's limits, never loosen
them. The spent epsilon is tracked with Opacus' RDP accountant across rounds
(:class:`PrivacyLedger`; :mod:`client.ledger` keeps it on the site's disk, per data set, across
runs) and a round that would exceed the budget is declined before any training happens.

DP noise and Poisson sampling draw from generators seeded from the OS's CSPRNG
(:func:`dp_generator`), never from torch's global generator, which the site seeds with values
the coordinator chooses.
"""

from __future__ import annotations

import logging
import math
import secrets
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.data_loader import DPDataLoader
from timm.layers import GroupNormAct
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

__all__ = [
    "PrivacyBudget",
    "PrivacyLedger",
    "PrivacyConfigError",
    "BudgetExhausted",
    "effective_budget",
    "plan_noise_multiplier",
    "make_private",
    "grad_sample_mode_for",
    "dp_generator",
]

_log = logging.getLogger(__name__)


class PrivacyConfigError(ValueError):
    """A DP setting is missing, malformed or out of range."""


class BudgetExhausted(ValueError):
    """Training this round would spend more epsilon than the site allows."""


@dataclass(frozen=True)
class PrivacyBudget:
    """A (epsilon, delta) budget for the whole run plus the per-sample clipping norm.

    Args:
        epsilon: total epsilon the site allows for the run (> 0).
        delta: target delta (0 < delta < 1); should be well below 1 / training rows.
        max_grad_norm: per-sample gradient clipping norm (> 0). Default 1.0.
        max_noise_multiplier: the site declines to train when its budget would need more
            noise than this (the update would be noise, not learning). Default 10.
        noise_multiplier: a fixed DP-SGD noise multiplier instead of one planned to spend
            ``epsilon`` over the run's rounds; ``epsilon`` stays the cap (the site declines a
            round that would exceed it). Default None (planned).
    """

    epsilon: float
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    max_noise_multiplier: float = 10.0
    noise_multiplier: float | None = None

    def __post_init__(self) -> None:
        problems = []
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            problems.append(f"dp-epsilon must be > 0, got {self.epsilon}")
        if not 0 < self.delta < 1:
            problems.append(f"dp-delta must be in (0, 1), got {self.delta}")
        if not self.max_grad_norm > 0:
            problems.append(f"dp-max-grad-norm must be > 0, got {self.max_grad_norm}")
        if not self.max_noise_multiplier > 0:
            problems.append(f"dp-max-noise-multiplier must be > 0, got {self.max_noise_multiplier}")
        if self.noise_multiplier is not None and not (
            math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0
        ):
            problems.append(f"dp-noise-multiplier must be > 0, got {self.noise_multiplier}")
        if problems:
            raise PrivacyConfigError("invalid privacy budget: " + "; ".join(problems))

    @classmethod
    def from_config(cls, config: Mapping[str, object], *, source: str) -> PrivacyBudget | None:
        """Read ``dp-epsilon``/``dp-delta``/``dp-max-grad-norm`` (and the optional
        ``dp-noise-multiplier``); None when epsilon is unset/0."""
        try:
            epsilon = float(config.get("dp-epsilon", 0) or 0)  # type: ignore[arg-type]
            delta = float(config.get("dp-delta", 0) or 1e-5)  # type: ignore[arg-type]
            clip = float(config.get("dp-max-grad-norm", 0) or 1.0)  # type: ignore[arg-type]
            max_noise = float(config.get("dp-max-noise-multiplier", 0) or 10.0)  # type: ignore[arg-type]
            fixed = float(config.get("dp-noise-multiplier", 0) or 0)  # type: ignore[arg-type]
        except (TypeError, ValueError) as err:
            raise PrivacyConfigError(f"{source}: DP settings must be numbers ({err})") from err
        if epsilon == 0:
            return None
        try:
            return cls(
                epsilon=epsilon,
                delta=delta,
                max_grad_norm=clip,
                max_noise_multiplier=max_noise,
                noise_multiplier=fixed or None,
            )
        except PrivacyConfigError as err:
            raise PrivacyConfigError(f"{source}: {err}") from err


def effective_budget(
    site: PrivacyBudget | None, requested: PrivacyBudget | None
) -> PrivacyBudget | None:
    """The stricter of the site's budget and the server's request (None = no DP)."""
    if site is None:
        return requested
    if requested is None:
        return site
    return PrivacyBudget(
        epsilon=min(site.epsilon, requested.epsilon),
        delta=min(site.delta, requested.delta),
        max_grad_norm=min(site.max_grad_norm, requested.max_grad_norm),
        max_noise_multiplier=site.max_noise_multiplier,  # the site's own policy
        noise_multiplier=_more_noise(site.noise_multiplier, requested.noise_multiplier),
    )


def _more_noise(a: float | None, b: float | None) -> float | None:
    """The larger fixed noise multiplier (more noise is stricter); None when neither is set."""
    given = [x for x in (a, b) if x is not None]
    return max(given) if given else None


@dataclass
class PrivacyLedger:
    """DP-SGD steps as RDP accountant history: ``(noise_multiplier, sample_rate, steps)``."""

    history: list[tuple[float, float, int]] = field(default_factory=list)

    def spent(self, delta: float) -> float:
        """Epsilon spent so far at ``delta`` (0 before any step)."""
        if not self.history:
            return 0.0
        accountant = RDPAccountant()
        accountant.history = list(self.history)
        return float(accountant.get_epsilon(delta=delta))

    def after(self, noise_multiplier: float, sample_rate: float, steps: int) -> PrivacyLedger:
        """The ledger as it would be after ``steps`` more steps."""
        return PrivacyLedger([*self.history, (noise_multiplier, sample_rate, steps)])

    def to_record(self) -> dict[str, list[float] | list[int]]:
        return {
            "noise": [h[0] for h in self.history],
            "rate": [h[1] for h in self.history],
            "steps": [int(h[2]) for h in self.history],
        }

    @classmethod
    def from_record(cls, record: Mapping[str, object] | None) -> PrivacyLedger:
        if not record:
            return cls()
        noise, rate, steps = (list(record[k]) for k in ("noise", "rate", "steps"))  # type: ignore[call-overload]
        if not len(noise) == len(rate) == len(steps):
            raise PrivacyConfigError("stored privacy ledger is corrupt: lists differ in length")
        return cls(
            [(float(n), float(r), int(s)) for n, r, s in zip(noise, rate, steps, strict=True)]
        )


def plan_noise_multiplier(budget: PrivacyBudget, *, sample_rate: float, total_steps: int) -> float:
    """Noise multiplier that spends exactly the budget over ``total_steps`` planned steps
    (``inf`` when no noise level Opacus searches can stay within it)."""
    if not 0 < sample_rate <= 1:
        raise PrivacyConfigError(f"sample rate must be in (0, 1], got {sample_rate}")
    if total_steps < 1:
        raise PrivacyConfigError(f"planned DP steps must be >= 1, got {total_steps}")
    try:
        return float(
            get_noise_multiplier(
                target_epsilon=budget.epsilon,
                target_delta=budget.delta,
                sample_rate=sample_rate,
                steps=total_steps,
                accountant="rdp",
            )
        )
    except ValueError as err:  # Opacus: "The privacy budget is too low."
        _log.debug("no finite noise multiplier reaches the budget: %s", err)
        return math.inf


# Layers whose per-sample gradients torch's expanded weights compute (exact types: a subclass
# may use its parameters in other ways); timm's GroupNormAct is GroupNorm + an activation.
_EXPANDED_WEIGHT_LAYERS = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.Embedding,
    GroupNormAct,
)


def grad_sample_mode_for(model: nn.Module) -> str:
    """Opacus' per-sample gradient mode for ``model``: ``"ew"`` (expanded weights) when every
    module holding trainable parameters is a layer type it supports, else ``"hooks"``.

    ``benchmarks/dp_cost.py`` measures the modes on the DP-safe MUF-Net: expanded weights ran
    a DP-SGD epoch fastest in every run (e.g. 1.8x a plain epoch, against 2.0x with hooks and
    2.8x with functorch, on 2 heavily loaded CPU cores) with the same per-sample gradients
    (tests/client/test_privacy.py); recurrent layers (Opacus' DPGRU) need hooks, and so does
    a model with its own ``training_loss`` (CMUS-Net): expanded weights only see calls made
    through the wrapper's ``forward``, and that loss also runs the auxiliary heads.
    """
    if callable(getattr(model, "training_loss", None)):
        return "hooks"
    for module in model.modules():
        if not any(p.requires_grad for p in module.parameters(recurse=False)):
            continue
        if type(module) not in _EXPANDED_WEIGHT_LAYERS:
            return "hooks"
    return "ew"


def dp_generator(device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator of its own on ``device``, seeded with 63 bits from the OS's CSPRNG
    (:func:`secrets.randbits`).

    DP-SGD draws its noise and its Poisson samples from such generators, never from torch's
    global generator: the site seeds that one with ``training_seed(seed, round, site)`` for
    repeatable non-DP rounds, and those values are the coordinator's, so noise drawn from it
    would be predictable by the very party DP protects against. The generator itself is
    torch's ordinary PRNG (Philox on CUDA, Mersenne Twister on CPU): an unpredictable seed,
    not cryptographic-strength noise (see :func:`make_private`).
    """
    generator = torch.Generator(device=device)
    generator.manual_seed(secrets.randbits(63))
    return generator


_rng_explained = False


def _explain_rng_once() -> None:
    global _rng_explained
    if _rng_explained:
        return
    _rng_explained = True
    _log.info(
        "DP-SGD noise and Poisson sampling come from torch generators seeded from the OS's "
        "CSPRNG, independent of torch's global seed and of any seed the coordinator sends; "
        "Opacus' secure_mode (torchcsprng) is off, so the noise is pseudo-random with an "
        "unpredictable seed, without secure_mode's protection against floating-point attacks"
    )


def make_private(
    model: nn.Module,
    optimizer: Optimizer,
    loader: DataLoader,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    grad_sample_mode: str | None = None,
    device: str | torch.device | None = None,
) -> tuple[nn.Module, Optimizer, DataLoader, PrivacyEngine]:
    """Wrap for DP-SGD with Poisson sampling (uniform: the class-balanced sampler is not used,
    since accounting assumes every row has the same sampling probability).

    The noise and the Poisson sampling each draw from a generator of their own
    (:func:`dp_generator`, seeded from the OS's CSPRNG), never from torch's global one, so
    ``torch.manual_seed`` with a value the coordinator chose does not make them predictable,
    and the global generator's state is left as it was by both. Opacus' ``secure_mode``
    (torchcsprng, not installed) stays off; its "Secure RNG turned off" warning is replaced
    by one log line per process saying what is used instead.

    Args:
        model: the model to train; its parameters' device (or ``device``) is where the noise
            is drawn, so move it to its training device first.
        optimizer: the optimizer over ``model``'s parameters.
        loader: the training loader; only its dataset, batch count (sample rate =
            1 / ``len(loader)``), workers and collate function are kept.
        noise_multiplier: DP-SGD noise multiplier (> 0).
        max_grad_norm: per-sample clipping norm (> 0).
        grad_sample_mode: Opacus' per-sample gradient mode; default
            :func:`grad_sample_mode_for` the model.
        device: device of the noise generator. Default: that of ``model``'s first parameter
            (CPU for a model without parameters).

    Returns:
        ``(model, optimizer, loader, engine)``: Opacus' wrapped model, DP optimizer, the
        Poisson-sampling loader, and the engine whose ``accountant.history`` holds the steps.
    """
    mode = grad_sample_mode or grad_sample_mode_for(model)
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    with warnings.catch_warnings():
        # Opacus warns on every engine without secure_mode; _explain_rng_once says instead
        # what the noise is drawn from.
        warnings.filterwarnings("ignore", message="Secure RNG turned off", category=UserWarning)
        engine = PrivacyEngine(accountant="rdp")
    _explain_rng_once()
    # Opacus' own Poisson wrapping would take the loader's generator (None: torch's global
    # one), so build the Poisson loader here with a generator of its own, and hand it to
    # Opacus as is (poisson_sampling=False only skips that wrapping and the guard below).
    poisson_loader = DPDataLoader.from_data_loader(loader, generator=dp_generator("cpu"))
    private_model, private_optimizer, private_loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=poisson_loader,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        poisson_sampling=False,
        noise_generator=dp_generator(device),
        grad_sample_mode=mode,
    )
    # What Opacus does for poisson_sampling=True: per-sample gradients of one Poisson batch
    # per step, never accumulated over several.
    private_model.forbid_grad_accumulation()
    return private_model, private_optimizer, private_loader, engine
