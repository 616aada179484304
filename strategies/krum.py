"""Krum (the update closest to its neighbours) with clinical metrics: robust aggregation."""

from __future__ import annotations

from flwr.serverapp.strategy import Krum

from strategies.clinical import ClinicalMetricsMixin

__all__ = ["ClinicalKrum"]


class ClinicalKrum(ClinicalMetricsMixin, Krum):
    """Flower's Krum (``num_malicious_nodes`` = f): the round's model is the single update with
    the smallest summed distance to its n - f - 2 nearest others (Blanchard et al., 2017)."""
