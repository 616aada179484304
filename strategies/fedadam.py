"""FedAdam (server-side Adam on the averaged update) with clinical metrics."""

from __future__ import annotations

from flwr.serverapp.strategy import FedAdam

from strategies.clinical import ClinicalMetricsMixin
from strategies.streaming import StreamingFedAvg

__all__ = ["ClinicalFedAdam"]


class ClinicalFedAdam(ClinicalMetricsMixin, FedAdam, StreamingFedAvg):
    """Flower's FedAdam (``eta`` = server learning rate); momentum lives on the server."""

    resume_attributes = ("m_t", "v_t")  # the server optimiser's moments
