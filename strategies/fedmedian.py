"""FedMedian (coordinate-wise median of the updates) with clinical metrics: robust aggregation."""

from __future__ import annotations

from flwr.serverapp.strategy import FedMedian

from strategies.clinical import ClinicalMetricsMixin

__all__ = ["ClinicalFedMedian"]


class ClinicalFedMedian(ClinicalMetricsMixin, FedMedian):
    """Flower's FedMedian: each weight is the median over sites, so one site that sends scaled
    or sign-flipped weights cannot move it far (needs 3 or more sites to help)."""
