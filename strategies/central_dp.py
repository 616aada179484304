"""Central (client-level) DP: Flower's client-side fixed-clipping wrapper around a strategy.

Each site clips its model update to ``clipping_norm`` (``client.app``'s conditional
``fixedclipping_mod``); the server adds Gaussian noise of standard deviation
``noise_multiplier * clipping_norm / n`` to the average of the ``n`` sampled updates. This
protects each *site's* contribution (one hospital in or out) from anyone who sees the global
model, but the server still sees every clipped update. Local DP (client.privacy) protects
each *patient* even from the server, at a higher utility cost.

Flower's noise calibration assumes an unweighted mean, so with central DP the average is
uniform over sites (``unit-weight``), not weighted by examples.

The privacy spent is tracked by :class:`CentralDPAccountant`: Flower's RDP accountant when
``flwr[dp]`` (Google's ``dp-accounting``) is installed, else Opacus' RDP accountant, both for
the Gaussian mechanism without sampling amplification (every site takes part in every round).
Flower's own accounted mode is not used because it requires the plain
``FedAvg.aggregate_train``, which the clinical-metrics strategies extend.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, Strategy
from opacus.accountants import RDPAccountant

__all__ = [
    "with_central_dp",
    "central_dp_epsilon",
    "CentralDPAccountant",
    "CentralDPFixedClipping",
    "UNIFORM_WEIGHT_KEY",
]

_log = logging.getLogger(__name__)

UNIFORM_WEIGHT_KEY = "unit-weight"


class CentralDPAccountant:
    """Client-level (epsilon, delta) of the noisy aggregates released so far.

    Each release is one Gaussian mechanism with noise multiplier ``noise_multiplier`` on the
    mean of ``num_sites`` clipped updates (sensitivity ``clipping_norm / num_sites``, noise
    std ``noise_multiplier * clipping_norm / num_sites``), every site sampled: no
    amplification, add-or-remove-one-site neighbours.

    Args:
        noise_multiplier: the central-DP noise multiplier (> 0).
        num_sites: sites sampled per round (> 0).
        delta: the delta epsilon is reported at (0 < delta < 1).
        prefer_flower: use Flower's accountant when ``flwr[dp]`` is installed. Default True.
    """

    def __init__(
        self,
        *,
        noise_multiplier: float,
        num_sites: int,
        delta: float,
        prefer_flower: bool = True,
    ) -> None:
        problems = []
        if not noise_multiplier > 0:
            problems.append(f"noise_multiplier must be > 0, got {noise_multiplier}")
        if num_sites < 1:
            problems.append(f"num_sites must be >= 1, got {num_sites}")
        if not 0 < delta < 1:
            problems.append(f"delta must be in (0, 1), got {delta}")
        if problems:
            raise ValueError("central DP accountant: " + "; ".join(problems))
        self.noise_multiplier = float(noise_multiplier)
        self.num_sites = int(num_sites)
        self.delta = float(delta)
        self.releases = 0
        self.rounds: list[dict[str, Any]] = []
        self._flower = _flower_accountant(self.num_sites, self.delta) if prefer_flower else None
        self.name = "flwr[dp] RDP" if self._flower is not None else "opacus RDP"
        self.round_epsilon = self.epsilon_after(1)

    def epsilon_after(self, releases: int) -> float:
        """Cumulative epsilon after ``releases`` releases (a projection; changes nothing)."""
        if releases <= 0:
            return 0.0
        if self._flower is not None:
            from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

            accountant = RdpAccountant(self._flower.config)
            accountant.compose(self._event(), count=releases)
            return float(accountant.get_epsilon(self.delta))
        opacus = RDPAccountant()
        opacus.history = [(self.noise_multiplier, 1.0, releases)]
        return float(opacus.get_epsilon(delta=self.delta))

    def _event(self) -> Any:
        from flwr.supercore.privacy_accounting import GaussianPrivacyEvent

        return GaussianPrivacyEvent(
            noise_multiplier=self.noise_multiplier,
            sample_size=self.num_sites,
            population_size=self.num_sites,
        )

    @property
    def epsilon(self) -> float:
        """Cumulative epsilon of every release so far (0 before the first)."""
        if self._flower is not None:
            return float(self._flower.get_epsilon(self.delta)) if self.releases else 0.0
        return self.epsilon_after(self.releases)

    def record(self, server_round: int, *, released: bool) -> dict[str, Any]:
        """Account for ``server_round``'s aggregate (if ``released``); returns its entry."""
        if released:
            self.releases += 1
            if self._flower is not None:
                self._flower.compose(self._event())
        entry = {
            "round": server_round,
            "released": released,
            "epsilon-round": self.round_epsilon if released else 0.0,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "releases": self.releases,
            "accountant": self.name,
        }
        self.rounds.append(entry)
        return entry

    def state(self) -> dict[str, Any]:
        """What a resume point keeps: the releases so far and their round entries."""
        return {"releases": self.releases, "rounds": [dict(r) for r in self.rounds]}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue the accounting of a resumed run (:meth:`state` of the crashed one)."""
        self.releases = int(state.get("releases", 0))
        self.rounds = [dict(r) for r in state.get("rounds", [])]
        if self._flower is not None and self.releases:
            self._flower.compose(self._event(), count=self.releases)

    def summary(self) -> dict[str, Any]:
        """The ``central_dp`` entry of results.json / history.json (settings, totals, rounds)."""
        return {
            "noise_multiplier": self.noise_multiplier,
            "num_sites": self.num_sites,
            "delta": self.delta,
            "epsilon": self.epsilon,
            "epsilon_per_round": self.round_epsilon,
            "releases": self.releases,
            "accountant": self.name,
            "rounds": list(self.rounds),
        }


def _flower_accountant(num_sites: int, delta: float) -> Any:
    """Flower's RDP accountant (no amplification), or None when ``flwr[dp]`` is missing."""
    from flwr.supercore.privacy_accounting import (
        NeighboringRelation,
        PrivacyConfig,
        SamplingMethod,
    )
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    config = PrivacyConfig(
        target_delta=delta,
        population_size=num_sites,
        neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
        sampling_method=SamplingMethod.NO_AMPLIFICATION,
    )
    try:
        return RdpAccountant(config)
    except ImportError:
        _log.info("flwr[dp] is not installed: central DP is accounted with Opacus' RDP")
        return None


class CentralDPFixedClipping(DifferentialPrivacyClientSideFixedClipping):
    """Flower's client-side fixed-clipping wrapper plus accounting and a complete audit.

    After each round it records the round's privacy (:class:`CentralDPAccountant`) in the
    wrapped strategy's audit trail and in :attr:`accountant`. Flower's wrapper skips a round
    in which any site replied with an error (the noise is calibrated for ``num_sites``
    updates); such a round is still audited and its failures recorded, and nothing is
    released, so it spends no epsilon.
    """

    def __init__(
        self,
        strategy: Strategy,
        *,
        noise_multiplier: float,
        clipping_norm: float,
        num_sites: int,
        delta: float,
    ) -> None:
        # Flower's own accounted mode stays off (see the module docstring).
        super().__init__(strategy, noise_multiplier, clipping_norm, num_sites)
        self.privacy = CentralDPAccountant(
            noise_multiplier=noise_multiplier, num_sites=num_sites, delta=delta
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        audit = getattr(self.strategy, "audit", None)
        released = bool(replies) and not any(m.has_error() for m in replies)
        if not released:
            entry = self.privacy.record(server_round, released=False)
            if audit is not None:
                audit.note_central_dp(entry)
            record = getattr(self.strategy, "record_train_replies", None)
            if record is not None:
                record(server_round, replies)
            _log.warning(
                "round %d: central DP releases no aggregate (a site failed or none replied; "
                "the noise is calibrated for %d sites); the global model stays as it was",
                server_round,
                self.num_sampled_clients,
            )
            return None, None
        preview = {
            "round": server_round,
            "released": True,
            "epsilon-round": self.privacy.round_epsilon,
            "epsilon": self.privacy.epsilon_after(self.privacy.releases + 1),
            "delta": self.privacy.delta,
            "releases": self.privacy.releases + 1,
            "accountant": self.privacy.name,
        }
        if audit is not None:
            audit.note_central_dp(preview)
        arrays, metrics = super().aggregate_train(server_round, replies)
        entry = self.privacy.record(server_round, released=arrays is not None)
        _log.info(
            "round %d: central DP epsilon %.3f this round, %.3f in total (delta %g, %s)",
            server_round,
            entry["epsilon-round"],
            entry["epsilon"],
            entry["delta"],
            entry["accountant"],
        )
        return arrays, metrics


def with_central_dp(
    strategy: Strategy,
    *,
    noise_multiplier: float,
    clipping_norm: float,
    num_sites: int,
    delta: float = 1e-5,
) -> CentralDPFixedClipping:
    """Wrap ``strategy``; every round must sample ``num_sites`` sites."""
    if noise_multiplier <= 0:
        raise ValueError(f"central DP needs a noise multiplier > 0, got {noise_multiplier}")
    if clipping_norm <= 0:
        raise ValueError(f"central DP needs a clipping norm > 0, got {clipping_norm}")
    return CentralDPFixedClipping(
        strategy,
        noise_multiplier=noise_multiplier,
        clipping_norm=clipping_norm,
        num_sites=num_sites,
        delta=delta,
    )


def central_dp_epsilon(*, noise_multiplier: float, rounds: int, delta: float) -> float:
    """Client-level epsilon after ``rounds`` noisy aggregations with every site sampled.

    The RDP accountant of the Gaussian mechanism with sampling rate 1 (no amplification),
    as :class:`CentralDPAccountant` (Opacus' implementation; used to plan a run).
    """
    if rounds <= 0:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, 1.0, rounds)]
    return float(accountant.get_epsilon(delta=delta))
