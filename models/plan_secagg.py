"""Checks of the secure-aggregation settings of a run config (no Flower import).

The ``secagg*`` keys of :class:`~models.plan.TrainingPlan` configure Flower's SecAgg+ protocol
(``flwr.server.workflow.SecAggPlusWorkflow``, legacy API). What the protocol itself needs,
from the installed flwr source (1.41):

- each site multiplies its update by ``num-examples / max_weight`` and clips every value to
  ``[-clipping_range, clipping_range]`` before quantising it to ``[0, quantization_range]``;
  the stochastic rounding casts to int32, so ``quantization_range`` must be < 2**31;
- masks and sums live modulo 2**32 (Flower's default modulus, kept here), so the sum of the
  sampled sites' quantised values only fits while ``sites * quantization_range < 2**32``
  (checked per round by :class:`strategies.secagg.SecureFedAvg`);
- a site must hold at most ``max_weight`` examples, or its update is clipped harder than
  configured (refused by the site, :mod:`client.secagg_app`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from models.plan import TrainingPlan

__all__ = ["SECAGG_MODULUS", "secagg_problems"]

#: Flower's default (and documented largest) SecAgg+ modulus.
SECAGG_MODULUS = 2**32
_INT32_LIMIT = 2**31
# Robust aggregators look at every site's update (distances, coordinate-wise order statistics).
_NEEDS_INDIVIDUAL_UPDATES = (
    "krum",
    "multikrum",
    "median",
    "fedmedian",
    "trimmed-mean",
    "trimmedmean",
    "fedtrimmedavg",
)


def secagg_problems(config: TrainingPlan) -> list[str]:
    """Every problem with the ``secagg*`` settings of ``config`` (empty when secagg is off)."""
    if not config.secagg:
        return []
    problems: list[str] = []
    if config.strategy != "fedavg":
        individual = (
            "it needs each site's own update, and secure aggregation shows the server only "
            "the sum (use robust aggregation or secagg, not both)"
        )
        why = {
            "fedbn": "FedBN keeps normalisation layers local, which the masked vector of "
            "SecAgg+ (every array of the model) does not allow for",
            **dict.fromkeys(_NEEDS_INDIVIDUAL_UPDATES, individual),
        }.get(config.strategy, "the secure path aggregates with FedAvg only")
        problems.append(f"secagg runs only with strategy fedavg, got {config.strategy!r}: {why}")
    if config.central_dp:
        problems.append(
            "secagg cannot run with central DP (central-dp-noise-multiplier > 0): central DP "
            "is built on the message-API strategy wrapper, secure aggregation on Flower's "
            "legacy workflow, and the two are not combined; use local DP (dp-epsilon) instead"
        )
    if config.min_train_nodes < 2 or config.min_available_nodes < 2:
        problems.append(
            "secagg needs at least 2 sites per round (min-train-nodes and min-available-nodes "
            f">= 2), got {config.min_train_nodes} and {config.min_available_nodes}"
        )
    shares = config.secagg_num_shares
    if shares != 0 and (shares < 3 or shares % 2 == 0):
        problems.append(
            f"secagg-num-shares must be 0 (every sampled site) or an odd number >= 3, got {shares}"
        )
    threshold = config.secagg_reconstruction_threshold
    if threshold <= 1:
        if not 0.5 < threshold <= 1:
            problems.append(
                "secagg-reconstruction-threshold as a fraction of the shares must be in "
                f"(0.5, 1] (a majority, or a server that lies about dropouts can unmask a "
                f"site), got {threshold}"
            )
    elif threshold != int(threshold) or (shares and threshold >= shares):
        problems.append(
            "secagg-reconstruction-threshold above 1 is a number of shares: an integer below "
            f"secagg-num-shares, got {threshold}"
        )
    if config.secagg_clipping_range <= 0:
        problems.append(f"secagg-clipping-range must be > 0, got {config.secagg_clipping_range}")
    if not 2 <= config.secagg_quantization_range < _INT32_LIMIT:
        problems.append(
            "secagg-quantization-range must be in [2, 2**31) (Flower rounds into int32), "
            f"got {config.secagg_quantization_range}"
        )
    if config.secagg_max_weight < 1:
        problems.append(f"secagg-max-weight must be >= 1, got {config.secagg_max_weight}")
    return problems
