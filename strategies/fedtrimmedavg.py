"""FedTrimmedAvg (coordinate-wise trimmed mean) with clinical metrics: robust aggregation."""

from __future__ import annotations

from flwr.serverapp.strategy import FedTrimmedAvg

from strategies.clinical import ClinicalMetricsMixin

__all__ = ["ClinicalFedTrimmedAvg"]


class ClinicalFedTrimmedAvg(ClinicalMetricsMixin, FedTrimmedAvg):
    """Flower's FedTrimmedAvg (``beta``: the fraction cut at each end of every coordinate;
    with n sites, ``int(beta * n)`` values are cut at each end, so beta >= 1/n is needed)."""
