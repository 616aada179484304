"""Tiny on-disk site datasets for the client tests (16-32 px PNGs, a few rows)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from models.tasks import TaskSpec, get_task

__all__ = ["small_task", "write_png", "write_csv", "make_site"]


def small_task(image_size: int = 16, in_chans: int = 3) -> TaskSpec:
    """The rcc-grading task (modalities bmode, ceus; classes low, high) at a tiny size."""
    return get_task("rcc-grading").replace(image_size=image_size, in_chans=in_chans)


def write_png(
    path: Path, *, height: int = 16, width: int = 16, mode: str = "L", seed: int = 0
) -> Path:
    """A random image with a bright top row (to check orientation)."""
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}[mode]
    pixels = rng.integers(0, 100, size=(height, width, channels), dtype=np.uint8)
    pixels[0] = 255
    if mode in ("LA", "RGBA"):
        pixels[..., -1] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode=mode).save(path)
    return path


def write_csv(path: Path, rows: Sequence[dict[str, str]], columns: Sequence[str] = ()) -> Path:
    """Write ``rows`` with ``columns`` (default: the first row's keys) as the header."""
    header = list(columns) or list(rows[0])
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def make_site(
    root: Path,
    *,
    labels: Sequence[str] = ("low", "high") * 5,
    mode: str = "L",
    height: int = 16,
    width: int = 16,
    extra: dict[str, Sequence[str]] | None = None,
) -> list[dict[str, str]]:
    """One patient per label with a bmode and a ceus PNG under ``root/img``.

    Returns the manifest rows (paths relative to ``root``); write them with :func:`write_csv`.
    """
    rows = []
    for i, label in enumerate(labels):
        row = {"patient_id": f"P{i:02d}", "label": label}
        for j, modality in enumerate(("bmode", "ceus")):
            name = f"img/p{i:02d}_{modality}.png"
            write_png(root / name, height=height, width=width, mode=mode, seed=10 * i + j)
            row[modality] = name
        for column, values in (extra or {}).items():
            row[column] = values[i]
        rows.append(row)
    return rows
