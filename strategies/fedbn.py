"""FedBN: normalisation layers stay at each site (Li et al., ICLR 2021).

Sites send every array except their normalisation layers' (``keep-local-norm`` in the round
config tells them to) and keep those in their node state. Flower has no FedBN; FedAvg over
the arrays sites send works, and the server re-attaches its untouched global normalisation
entries so the global model stays complete. Useful when sites differ by scanner (feature
shift): each site keeps statistics of its own images.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from strategies.fedavg import ClinicalFedAvg

__all__ = ["ClinicalFedBN", "KEEP_LOCAL_NORM_KEY"]

KEEP_LOCAL_NORM_KEY = "keep-local-norm"


class ClinicalFedBN(ClinicalFedAvg):
    """FedAvg over everything but normalisation layers, which stay local."""

    _sites_keep_arrays = True  # updates lack the normalisation layers

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self._global: ArrayRecord | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = arrays
        config[KEEP_LOCAL_NORM_KEY] = True
        return super().configure_train(server_round, arrays, config, grid)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config[KEEP_LOCAL_NORM_KEY] = True
        return super().configure_evaluate(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is not None and self._global is not None:
            for key, value in self._global.items():
                if key not in arrays:
                    arrays[key] = value
        return arrays, metrics
