"""FedYogi (server-side Yogi on the averaged update) with clinical metrics."""

from __future__ import annotations

from flwr.serverapp.strategy import FedYogi

from strategies.clinical import ClinicalMetricsMixin
from strategies.streaming import StreamingFedAvg

__all__ = ["ClinicalFedYogi"]


class ClinicalFedYogi(ClinicalMetricsMixin, FedYogi, StreamingFedAvg):
    """Flower's FedYogi (``eta`` = server learning rate)."""

    resume_attributes = ("m_t", "v_t")  # the server optimiser's moments
