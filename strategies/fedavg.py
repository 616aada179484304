"""FedAvg (weighted by examples) with clinical metrics."""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvg

from strategies.clinical import ClinicalMetricsMixin, site_of

__all__ = ["ClinicalFedAvg", "site_of"]


class ClinicalFedAvg(ClinicalMetricsMixin, FedAvg):
    """Flower's FedAvg; see :class:`~strategies.clinical.ClinicalMetricsMixin`."""
