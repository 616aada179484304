"""Data path: images/s from manifest to batch, with and without the decoded-image cache,
vs what a training step consumes.

One site of the dual-center data (the platform-overhead sizes): its training loader
(``client.dataset.make_loader``: class-balanced sampling, augmentation, collation; no worker
processes, as the sites run) is drained for whole epochs. Without the cache every epoch
decodes and resizes each PNG again; with it (``image_cache``, what a site keeps across
rounds with ``cache-images``) the first epoch fills the cache and later ones only augment.
The training demand is the images/s of MUF-Net's training step (forward, focal loss,
backward, SGD step) on batches already in memory. Ratios ``loader / demand`` above 1 mean
the loader is faster than training; since loading and training share one core here, the
loader's share of an epoch is ``demand / (loader + demand)``.

    python -m benchmarks.data_path [--quick]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._common import Target, bench_main, ratio, time_it
from benchmarks.platform_overhead import _run_config, bench_setup, make_data
from client.dataset import make_loader
from client.manifest import load_manifest
from client.site import RoundSettings
from client.train import train_local
from models import create_model_for_task
from server.config import RunConfig

__all__ = ["run", "main"]

DESCRIPTION = __doc__.splitlines()[0]


def _epoch_images_per_second(loader: torch.utils.data.DataLoader, modalities: int) -> float:
    started = time.perf_counter()
    images = 0
    for batch in loader:
        images += int(batch[-1].shape[0]) * modalities
    return images / (time.perf_counter() - started)


def run(quick: bool = False) -> dict:
    torch.set_num_threads(1)
    # the platform benchmark's images and model; fewer patients: the ratios are per image
    setup = {
        **bench_setup(quick),
        **({} if quick else {"patients": {"center-a": 30, "center-b": 4}}),
    }
    epochs = 2 if quick else 3
    with tempfile.TemporaryDirectory(prefix="fedfusion-data-") as tmp:
        manifest_path = make_data(setup, Path(tmp) / "data")
        config = RunConfig.from_mapping(_run_config(setup, 0))
        rounds = RoundSettings.from_config({**config.client_config(), "server-round": 1})
        task = rounds.task
        manifest = load_manifest(manifest_path, task, site="center-a", seed=0)
        modalities = len(task.modalities)

        def loader(cache: dict | None) -> torch.utils.data.DataLoader:
            return make_loader(
                manifest,
                "train",
                batch_size=rounds.batch_size,
                train=True,
                balanced=rounds.class_balanced_sampling,
                seed=1,
                image_cache=cache,
            )

        uncached = [_epoch_images_per_second(loader(None), modalities) for _ in range(epochs)]
        cache: dict = {}
        fill = _epoch_images_per_second(loader(cache), modalities)
        cached = [_epoch_images_per_second(loader(cache), modalities) for _ in range(epochs)]
        train_images = len(loader(None).dataset) * modalities

        # the training step's demand, on batches already in memory
        batches = list(loader(cache))
        model = create_model_for_task(task)
        config_one = rounds.train

        class _Batches:
            dataset = None  # train_local reads loader.dataset's counters when there is one

            def __iter__(self):  # type: ignore[no-untyped-def]
                return iter(batches)

            def __len__(self) -> int:
                return len(batches)

        counts = manifest.class_counts("train")
        timing = time_it(
            lambda: train_local(model, _Batches(), config=config_one, class_counts=counts),  # type: ignore[arg-type]
            warmup=1,
            repeats=1 if quick else 2,
        )
        step_images = sum(int(b[-1].shape[0]) for b in batches) * modalities
        demand = step_images / timing.median
    loader_uncached = statistics.median(uncached)
    loader_cached = statistics.median(cached)
    return {
        "name": "data_path",
        "description": DESCRIPTION,
        "setup": {**setup, "site": "center-a", "train_images_per_epoch": train_images},
        "images_per_second": {
            "loader_uncached": uncached,
            "loader_cache_fill": fill,
            "loader_cached": cached,
            "training_step_demand": demand,
        },
        "ratios": {
            "loader_uncached_over_demand": ratio(loader_uncached, demand),
            "loader_cached_over_demand": ratio(loader_cached, demand),
            "cached_over_uncached": ratio(loader_cached, loader_uncached),
            "loader_share_of_epoch_cached": demand / (loader_cached + demand),
        },
        "targets": {
            "loader_cached_over_demand": Target(
                1.0, at_most=False, note="the loader is not the bottleneck"
            ).to_dict(),
        },
        "headline": {
            "loader images/s, no cache": loader_uncached,
            "loader images/s, cache (after the first epoch)": loader_cached,
            "training step images/s": demand,
        },
    }


def main() -> None:
    bench_main(run, DESCRIPTION)


if __name__ == "__main__":
    main()
