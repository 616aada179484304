"""FedAvg (weighted by examples) with clinical metrics."""

from __future__ import annotations

from strategies.clinical import ClinicalMetricsMixin, site_of
from strategies.streaming import StreamingFedAvg

__all__ = ["ClinicalFedAvg", "site_of"]


class ClinicalFedAvg(ClinicalMetricsMixin, StreamingFedAvg):
    """Flower's FedAvg with streaming aggregation (:mod:`strategies.streaming`); see
    :class:`~strategies.clinical.ClinicalMetricsMixin`."""
