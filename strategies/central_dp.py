"""Central (client-level) DP: Flower's client-side fixed-clipping wrapper around a strategy.

Each site clips its model update to ``clipping_norm`` (``client.app``'s conditional
``fixedclipping_mod``); the server adds Gaussian noise of standard deviation
``noise_multiplier * clipping_norm / n`` to the average of the ``n`` sampled updates. This
protects each *site's* contribution (one hospital in or out) from anyone who sees the global
model, but the server still sees every clipped update. Local DP (client.privacy) protects
each *patient* even from the server, at a higher utility cost.

Flower's noise calibration assumes an unweighted mean, so with central DP the average is
uniform over sites (``unit-weight``), not weighted by examples.
"""

from __future__ import annotations

from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, Strategy
from opacus.accountants import RDPAccountant

__all__ = ["with_central_dp", "central_dp_epsilon", "UNIFORM_WEIGHT_KEY"]

UNIFORM_WEIGHT_KEY = "unit-weight"


def with_central_dp(
    strategy: Strategy, *, noise_multiplier: float, clipping_norm: float, num_sites: int
) -> DifferentialPrivacyClientSideFixedClipping:
    """Wrap ``strategy``; every round must sample ``num_sites`` sites."""
    if noise_multiplier <= 0:
        raise ValueError(f"central DP needs a noise multiplier > 0, got {noise_multiplier}")
    if clipping_norm <= 0:
        raise ValueError(f"central DP needs a clipping norm > 0, got {clipping_norm}")
    return DifferentialPrivacyClientSideFixedClipping(
        strategy, noise_multiplier, clipping_norm, num_sites
    )


def central_dp_epsilon(*, noise_multiplier: float, rounds: int, delta: float) -> float:
    """Client-level epsilon after ``rounds`` noisy aggregations with every site sampled.

    The RDP accountant of the Gaussian mechanism with sampling rate 1 (no amplification).
    """
    if rounds <= 0:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, 1.0, rounds)]
    return float(accountant.get_epsilon(delta=delta))
