"""FedAvg aggregation as a running weighted sum (one model of memory, whatever the sites).

Flower's ``aggregate_arrayrecords`` deserialises every array of every reply into a new NumPy
array, multiplies it into another new array and adds that to the sum: two allocations of each
layer per site. :class:`RunningMean` reads each reply's arrays in place (a read-only view of
the message's bytes), multiplies into one reusable scratch buffer and adds into the sum, so
the only memory it holds is the sum itself (one model) plus the scratch (the largest layer),
and it never needs more than one update at a time: updates can be added as they arrive and
dropped.

:class:`StreamingFedAvg` is Flower's ``FedAvg`` with this aggregation; our strategies put it
under Flower's FedAvg family (FedProx, FedAdam, FedYogi subclass FedAvg, so it goes between
them and FedAvg in the bases). With the total weight known up front (a round's replies are
all there) the sum is formed exactly as Flower forms it, ``sum_i x_i * (w_i / W)`` in the
arrays' own precision, so the result is bit-for-bit Flower's; without it (``add`` as replies
stream in) the sum is divided once at the end and agrees to float32 rounding.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from models.array_codec import array_from_numpy, array_view

__all__ = [
    "RunningMean",
    "StreamingFedAvg",
    "fedavg_arrays",
    "add_difference",
    "array_view",
    "array_from_numpy",
]


def _sum_dtype(dtype: np.dtype) -> np.dtype:
    """The sum's type: float32 for float16/32 updates (compressed updates are summed at
    float32), else what NumPy gives ``array * python_float`` (Flower's choice)."""
    if dtype == np.float16:
        return np.dtype(np.float32)
    return np.result_type(dtype, 1.0)


class RunningMean:
    """Weighted mean of ArrayRecords added one at a time.

    Args:
        total_weight: the sum of all weights, when known before the first :meth:`add`; each
            update is then scaled by ``weight / total_weight`` as it is added (Flower's
            arithmetic). None = divide by the weights seen, in :meth:`result`.
    """

    def __init__(self, *, total_weight: float | None = None) -> None:
        if total_weight is not None and not total_weight > 0:
            raise ValueError(f"total_weight must be > 0, got {total_weight}")
        self._total_given = total_weight
        self._seen = 0.0
        self._count = 0
        self._sum: dict[str, np.ndarray] = {}
        self._scratch: dict[np.dtype, np.ndarray] = {}

    @property
    def count(self) -> int:
        """How many updates were added."""
        return self._count

    def add(self, arrays: ArrayRecord, weight: float) -> None:
        """Add ``weight * arrays`` to the sum; every update must have the first one's keys."""
        if not weight >= 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        if self._count and set(arrays.keys()) != set(self._sum):
            missing = sorted(set(self._sum) - set(arrays.keys()))[:5]
            extra = sorted(set(arrays.keys()) - set(self._sum))[:5]
            raise ValueError(
                f"update {self._count + 1} has other arrays than the first: missing {missing}, "
                f"extra {extra}"
            )
        factor = weight / self._total_given if self._total_given is not None else float(weight)
        for key, array in arrays.items():
            value = array_view(array)
            if key not in self._sum:
                total = np.empty(value.shape, dtype=_sum_dtype(value.dtype))
                np.multiply(value, factor, out=total, dtype=total.dtype, casting="same_kind")
                self._sum[key] = total
                continue
            total = self._sum[key]
            if value.shape != total.shape:
                raise ValueError(
                    f"update {self._count + 1}: array {key!r} has shape {value.shape}, "
                    f"expected {total.shape}"
                )
            scratch = self._scratch_for(total.dtype, total.size).reshape(total.shape)
            np.multiply(value, factor, out=scratch, dtype=total.dtype, casting="same_kind")
            np.add(total, scratch, out=total)
        del value  # the view keeps the message's bytes alive
        self._seen += weight
        self._count += 1

    def _scratch_for(self, dtype: np.dtype, size: int) -> np.ndarray:
        buffer = self._scratch.get(dtype)
        if buffer is None or buffer.size < size:
            buffer = np.empty(size, dtype=dtype)
            self._scratch[dtype] = buffer
        return buffer[:size]

    def result(self) -> ArrayRecord:
        """The weighted mean as an ArrayRecord (the sum is freed layer by layer as it goes)."""
        if not self._count:
            raise ValueError("no update was added")
        if self._total_given is None and not self._seen > 0:
            raise ValueError("the weights of the added updates sum to 0")
        self._scratch.clear()
        divisor = None if self._total_given is not None else self._seen
        out: dict[str, Array] = {}
        for key in list(self._sum):
            value = self._sum.pop(key)
            if divisor is not None:
                np.divide(value, divisor, out=value, casting="unsafe")
            out[key] = array_from_numpy(value)
            del value
        self._count = 0
        return ArrayRecord(out)


def fedavg_arrays(records: Iterable[RecordDict], weighted_by_key: str) -> ArrayRecord:
    """FedAvg of the replies' ArrayRecords weighted by their MetricRecord's ``weighted_by_key``
    (what Flower's ``aggregate_arrayrecords`` returns, computed with :class:`RunningMean`)."""
    records = list(records)
    weights = [float(next(iter(r.metric_records.values()))[weighted_by_key]) for r in records]
    mean = RunningMean(total_weight=sum(weights))
    for record, weight in zip(records, weights, strict=True):
        for arrays in record.array_records.values():
            mean.add(arrays, weight)
    return mean.result()


def add_difference(base: ArrayRecord, difference: ArrayRecord) -> ArrayRecord:
    """``base + difference`` for each array of ``difference`` whose base is floating (the
    mean of float16-encoded updates); other arrays are taken from ``difference`` as they are."""
    out: dict[str, Array] = {}
    for key, diff in difference.items():
        if key not in base:
            raise ValueError(f"the update has array {key!r}, which the global model lacks")
        start = array_view(base[key])
        delta = array_view(diff)
        if np.issubdtype(start.dtype, np.floating):
            out[key] = array_from_numpy((start + delta).astype(start.dtype, copy=False))
        else:
            out[key] = diff
    return ArrayRecord(out)


class StreamingFedAvg(FedAvg):
    """Flower's FedAvg with :func:`fedavg_arrays` as the array aggregation.

    ``update_dtype`` (set by the ServerApp from the run config): ``"float16"`` means the sites
    send weight differences from this round's global weights (``client.app.encode_update``);
    their mean is added back to the global weights the round started from.
    """

    update_dtype: str = "float32"

    def configure_train(self, server_round, arrays, config, grid):  # type: ignore[no-untyped-def]
        self._round_start_arrays = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid_replies, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid_replies:
            return None, None
        contents = [msg.content for msg in valid_replies]
        arrays = fedavg_arrays(contents, self.weighted_by_key)
        if self.update_dtype != "float32":
            arrays = add_difference(self._round_start_arrays, arrays)
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        return arrays, metrics
