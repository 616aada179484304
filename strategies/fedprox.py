"""FedProx with clinical metrics: Flower's FedProx sends ``proximal-mu``; sites add the term."""

from __future__ import annotations

from flwr.serverapp.strategy import FedProx

from strategies.clinical import ClinicalMetricsMixin
from strategies.streaming import StreamingFedAvg

__all__ = ["ClinicalFedProx"]


class ClinicalFedProx(ClinicalMetricsMixin, FedProx, StreamingFedAvg):
    """Flower's FedProx (``proximal_mu``); the site's training adds ``mu/2 ||w - w_global||^2``."""
