"""Strategy names used in run configs and ``--methods``, and one factory."""

from __future__ import annotations

from collections.abc import Callable

from flwr.serverapp.strategy import Strategy

from models._options import look_up_option
from strategies.fedadam import ClinicalFedAdam
from strategies.fedavg import ClinicalFedAvg
from strategies.fedbn import ClinicalFedBN
from strategies.fedmedian import ClinicalFedMedian
from strategies.fedprox import ClinicalFedProx
from strategies.fedtrimmedavg import ClinicalFedTrimmedAvg
from strategies.fedyogi import ClinicalFedYogi
from strategies.history import RoundRecord
from strategies.krum import ClinicalKrum

__all__ = ["STRATEGIES", "build_strategy"]

STRATEGIES: dict[str, type[Strategy]] = {
    "fedavg": ClinicalFedAvg,
    "fedprox": ClinicalFedProx,
    "fedbn": ClinicalFedBN,
    "fedadam": ClinicalFedAdam,
    "fedyogi": ClinicalFedYogi,
    # Robust aggregation for an untrusted federation (Flower's own strategies).
    "fedmedian": ClinicalFedMedian,
    "fedtrimmedavg": ClinicalFedTrimmedAvg,
    "krum": ClinicalKrum,
}


def build_strategy(
    name: str,
    *,
    on_round_end: Callable[[RoundRecord], None] | None = None,
    proximal_mu: float = 0.01,
    server_lr: float = 0.01,
    trim_beta: float = 0.2,
    krum_malicious: int = 1,
    **common: object,
) -> Strategy:
    """The clinical-metrics strategy called ``name``; ``common`` goes to Flower's FedAvg."""
    cls = STRATEGIES[look_up_option("strategy", name, STRATEGIES)]
    extra: dict[str, object] = {}
    if cls is ClinicalFedProx:
        extra["proximal_mu"] = proximal_mu
    elif cls in (ClinicalFedAdam, ClinicalFedYogi):
        extra["eta"] = server_lr
    elif cls is ClinicalFedTrimmedAvg:
        extra["beta"] = trim_beta
    elif cls is ClinicalKrum:
        extra["num_malicious_nodes"] = krum_malicious
    return cls(on_round_end=on_round_end, **common, **extra)  # type: ignore[call-arg]
