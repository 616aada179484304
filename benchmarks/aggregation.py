"""FedAvg over K site updates of a 10M-parameter model: ours vs Flower's built-in.

Ours is :func:`strategies.streaming.fedavg_arrays` (a running weighted sum read straight from
the messages' bytes); Flower's is ``flwr.serverapp.strategy.strategy_utils.
aggregate_arrayrecords``, what ``flwr.serverapp.strategy.FedAvg.aggregate_train`` calls. Both
get the same K reply RecordDicts (the arrays of ``U`` distinct updates, reused round-robin so
that K = 100 does not need 100 models of input memory; the work per update is the same).
Reported per K: seconds per update (median of repeats) and the peak memory each adds above
its inputs (what :mod:`tracemalloc` saw: NumPy arrays and message bytes are all it
allocates; process RSS is reported beside it), in units of one model's fp32 size.

A third measurement feeds :class:`strategies.streaming.RunningMean` one update at a time from
a generator that copies each message's bytes as it "arrives" and drops it after: its peak is
the sum, one scratch layer and the update in flight, whatever K (K = 3 vs the largest K).
Flower's function takes a list (it reads all the weights first), so it needs all K updates in
memory at once: K models.

    python -m benchmarks.aggregation [--quick]
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Iterator

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from benchmarks._common import Target, bench_main, peak_memory, ratio, time_it
from strategies.streaming import RunningMean, fedavg_arrays

__all__ = ["run", "main"]

DESCRIPTION = __doc__.splitlines()[0]
_KEY = "num-examples"


def _layer_shapes(num_params: int) -> list[tuple[int, ...]]:
    """A CNN-like mix: conv kernels of several sizes, a big FC layer, biases, BN vectors."""
    shapes: list[tuple[int, ...]] = []
    budget = num_params
    for channels in (32, 64, 128, 256, 512, 512, 512):
        size = channels * channels * 9 + 3 * channels
        if size > budget // 2:  # leave room for the classifier
            break
        shapes += [(channels, channels, 3, 3), (channels,), (channels,), (channels,)]
        budget -= size
    while budget > 1000:  # the rest in fully connected layers of at most 1M
        rows = min(1000, budget // 1000)
        shapes += [(rows, 1000), (rows,)]
        budget -= rows * 1001
    return shapes


def _update(shapes: list[tuple[int, ...]], seed: int) -> ArrayRecord:
    rng = np.random.default_rng(seed)
    return ArrayRecord(
        {
            f"layer{i}": Array(rng.standard_normal(shape, dtype=np.float32))
            for i, shape in enumerate(shapes)
        }
    )


def _reply(arrays: ArrayRecord, n: int) -> RecordDict:
    return RecordDict({"arrays": arrays, "metrics": MetricRecord({_KEY: n})})


def _max_abs_difference(a: ArrayRecord, b: ArrayRecord) -> float:
    return max(float(np.max(np.abs(a[k].numpy() - b[k].numpy()))) for k in a)


def _arrived(update: ArrayRecord) -> ArrayRecord:
    """A fresh copy of ``update``'s bytes, as a message decoded off the wire would hold."""
    return ArrayRecord(
        {
            key: Array(
                dtype=a.dtype, shape=tuple(a.shape), stype=a.stype, data=bytes(memoryview(a.data))
            )
            for key, a in update.items()
        }
    )


def _streamed_peak(updates: list[ArrayRecord], k: int) -> int:
    """Peak extra bytes of a :class:`RunningMean` fed ``k`` updates arriving one at a time."""

    def _arriving() -> Iterator[tuple[ArrayRecord, int]]:
        for i in range(k):
            yield _arrived(updates[i % len(updates)]), 10 + 7 * i

    gc.collect()
    with peak_memory() as memory:
        mean = RunningMean()
        for arrays, n in _arriving():
            mean.add(arrays, n)
            del arrays
        mean.result()
    return memory.traced_bytes


def run(quick: bool = False) -> dict:
    num_params = 1_000_000 if quick else 10_000_000
    ks = [2, 5] if quick else [2, 10, 50, 100]
    distinct = 2 if quick else 4
    shapes = _layer_shapes(num_params)
    actual_params = sum(int(np.prod(s)) for s in shapes)
    model_bytes = 4 * actual_params
    updates = [_update(shapes, seed) for seed in range(distinct)]
    rows = []
    for k in ks:
        replies = [_reply(updates[i % distinct], 10 + 7 * i) for i in range(k)]
        row: dict[str, float | int] = {"k": k}
        outputs: dict[str, ArrayRecord] = {}
        for name, fn in (("ours", fedavg_arrays), ("flower", aggregate_arrayrecords)):
            timing = time_it(
                functools.partial(fn, replies, _KEY),
                warmup=0 if quick or k > 10 else 1,
                repeats=1 if quick or k > 10 else 3,
            )
            gc.collect()
            with peak_memory() as memory:
                out = fn(replies, _KEY)
            row[f"{name}_seconds_per_update"] = timing.median / k
            row[f"{name}_peak_extra_models"] = memory.traced_bytes / model_bytes
            row[f"{name}_peak_extra_rss_models"] = memory.rss_bytes / model_bytes
            outputs[name] = out
            del out
        row["max_abs_difference"] = _max_abs_difference(outputs["ours"], outputs["flower"])
        outputs.clear()
        row["time_ratio"] = ratio(
            float(row["ours_seconds_per_update"]), float(row["flower_seconds_per_update"])
        )
        rows.append(row)
        del replies
        gc.collect()

    # Replies arriving one at a time (a generator yields each and it is dropped after use);
    # from K = 3 on the sum and the scratch buffer exist, so the peak is reached there.
    streamed = {k: _streamed_peak(updates, k) / model_bytes for k in (3, ks[-1])}
    largest = rows[-1]
    ratios = {
        "time_per_update_ours_over_flower_k_max": float(largest["time_ratio"]),
        "peak_extra_memory_ours_models_k_max": float(largest["ours_peak_extra_models"]),
        "peak_extra_memory_ours_over_flower_k_max": ratio(
            float(largest["ours_peak_extra_models"]), float(largest["flower_peak_extra_models"])
        ),
        "streamed_peak_memory_models": streamed[ks[-1]],
        "streamed_peak_memory_k_max_over_k3": ratio(streamed[ks[-1]], streamed[3]),
    }
    return {
        "name": "aggregation",
        "description": DESCRIPTION,
        "params": actual_params,
        "model_bytes_fp32": model_bytes,
        "distinct_updates": distinct,
        "rows": rows,
        "streamed": {
            "peak_extra_models_by_k": streamed,
            "flower_needs_all_updates_models": float(ks[-1]),
        },
        "ratios": ratios,
        "targets": {
            "time_per_update_ours_over_flower_k_max": Target(1.0, note="no slower").to_dict(),
            "peak_extra_memory_ours_models_k_max": Target(2.0, note="<= 2 models").to_dict(),
            "streamed_peak_memory_k_max_over_k3": Target(
                1.1, note="does not grow with K (sum + the update in flight)"
            ).to_dict(),
        },
        "headline": {
            "params": actual_params,
            **{
                f"K={r['k']}: ours / flower s per update": f"{r['ours_seconds_per_update']:.4f} / "
                f"{r['flower_seconds_per_update']:.4f}; peak extra models "
                f"{r['ours_peak_extra_models']:.2f} / {r['flower_peak_extra_models']:.2f}"
                for r in rows
            },
            **{f"streamed K={k}: peak extra models": v for k, v in streamed.items()},
        },
    }


def main() -> None:
    bench_main(run, DESCRIPTION)


if __name__ == "__main__":
    main()
