"""Partition one data set into simulated sites, by patient.

``--partition`` takes one of:

=====================  ===================================================================
``natural``            the manifest's own ``site`` column (the default)
``iid``                patients dealt at random into ``--sites`` sites of equal size
``dirichlet:ALPHA``    label skew: each class's patients are spread over the sites with
                       proportions drawn from Dirichlet(ALPHA) (small ALPHA = each site sees
                       few classes; large ALPHA = close to iid)
``quantity:ALPHA``     quantity skew: site sizes drawn from Dirichlet(ALPHA), labels iid
=====================  ===================================================================

and two per-site perturbations on top of any partition:

* ``intensity_shift`` (``--intensity-shift S``): every site but the first gets its own scanner
  profile: a display gain ``exp(N(0, (0.25 S)^2))`` and a contrast curve ``x ** exp(N(0,
  (0.3 S)^2))``; its images are rewritten with it (PNG/JPEG/TIFF/BMP/NPY inputs);
* ``missing`` (``--missing-modality ceus:2``): the last K sites lack that modality (its cells
  are emptied; the data path then feeds a zero image, see docs/data-format.md).

Patients never straddle sites. Every site first gets ``min_patients`` patients at random (so
no site is empty however small ALPHA is); the skewed rule deals out the rest. The result is a
manifest with a new ``site`` column (``site-01`` ...; the old one is kept as ``source_site``)
and absolute image paths.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from models._options import look_up_option
from models.tasks import TaskSpec
from simulation.folds import all_rows, write_manifest

__all__ = ["PartitionError", "PartitionSpec", "parse_partition", "partition_manifest"]

_log = logging.getLogger(__name__)

_KINDS = ("natural", "iid", "dirichlet", "quantity")


class PartitionError(ValueError):
    """A partition is malformed or cannot be made from the data."""


@dataclass(frozen=True)
class PartitionSpec:
    """How to turn one data set into sites.

    Args:
        kind: ``natural``, ``iid``, ``dirichlet`` or ``quantity``.
        alpha: Dirichlet concentration (``dirichlet`` and ``quantity``).
        sites: number of sites (all kinds but ``natural``).
        intensity_shift: scale of the per-site scanner differences; 0 = none.
        missing: modality -> number of sites (the last ones) that lack it.
        min_patients: fewest patients a site may get. Default 2 (one train, one test).
    """

    kind: str = "natural"
    alpha: float = math.inf
    sites: int = 0
    intensity_shift: float = 0.0
    missing: dict[str, int] = field(default_factory=dict)
    min_patients: int = 2

    @property
    def is_identity(self) -> bool:
        return self.kind == "natural" and not self.intensity_shift and not self.missing

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "alpha": None if math.isinf(self.alpha) else self.alpha,
            "sites": self.sites,
            "intensity_shift": self.intensity_shift,
            "missing": dict(self.missing),
        }


def parse_partition(
    text: str = "natural",
    *,
    sites: int | None = None,
    intensity_shift: float = 0.0,
    missing: str | None = None,
) -> PartitionSpec:
    """Parse the command-line form (``dirichlet:0.5``, missing ``ceus:2``), all problems at once."""
    problems = []
    name, _, arg = text.strip().partition(":")
    kind = look_up_option("partition", name.strip().lower(), _KINDS)
    alpha = math.inf
    if kind in ("dirichlet", "quantity"):
        try:
            alpha = float(arg)
        except ValueError:
            alpha = math.nan
        if not alpha > 0 or math.isinf(alpha):
            problems.append(f"{kind} needs a concentration > 0, e.g. '{kind}:0.5', got {text!r}")
    elif arg:
        problems.append(f"partition {kind!r} takes no argument, got {text!r}")
    if kind == "natural" and sites:
        problems.append("--sites needs a partition (iid, dirichlet:ALPHA or quantity:ALPHA)")
    if kind != "natural" and (sites is None or sites < 2):
        problems.append(f"partition {kind!r} needs --sites N with N >= 2, got {sites}")
    if not intensity_shift >= 0 or math.isinf(intensity_shift):
        problems.append(f"intensity shift must be a finite number >= 0, got {intensity_shift}")
    lacking: dict[str, int] = {}
    for item in (missing or "").split(","):
        if not item.strip():
            continue
        modality, _, count = item.partition(":")
        try:
            lacking[modality.strip()] = int(count or 1)
        except ValueError:
            problems.append(f"missing modality expects MODALITY:SITES (e.g. ceus:2), got {item!r}")
    if any(v < 1 for v in lacking.values()):
        problems.append(f"missing modality site counts must be >= 1, got {lacking}")
    if problems:
        raise PartitionError("invalid partition: " + "; ".join(problems))
    return PartitionSpec(
        kind=kind,
        alpha=alpha,
        sites=sites or 0,
        intensity_shift=intensity_shift,
        missing=lacking,
    )


def partition_manifest(
    manifest: Path, task: TaskSpec, spec: PartitionSpec, *, seed: int, out_dir: Path
) -> tuple[Path, dict[str, Any]]:
    """Write the partitioned manifest to ``out_dir/manifest.csv``.

    Returns:
        The manifest path and a summary (``spec``, and per site: patients, rows, rows per class).
    """
    frame = all_rows(manifest, task, check_images=False)
    rng = np.random.default_rng(seed)
    if spec.kind != "natural":
        frame["source_site"] = frame["site"]
        by_patient = _assign_patients(frame, spec, rng)
        frame["site"] = frame["patient_id"].astype(str).map(by_patient)
    sites = sorted(s for s in frame["site"].unique() if s)
    if spec.missing:
        _drop_modalities(frame, task, spec.missing, sites)
    if spec.intensity_shift:
        _shift_intensities(frame, task, sites, spec.intensity_shift, rng, out_dir / "images")
    frame = frame.drop(columns=["split"], errors="ignore")  # each site splits its own patients
    path = write_manifest(frame, out_dir / "manifest.csv")
    summary = {"spec": spec.to_dict(), "sites": _site_summary(frame, task)}
    _log.info("partition %s: %d sites written to %s", spec.kind, len(sites), path)
    return path, summary


# -- assignment -----------------------------------------------------------------------------


def _patients(frame: pd.DataFrame) -> pd.Series:
    """One label per patient (the first row's), indexed by patient id, in a fixed order."""
    return frame.groupby(frame["patient_id"].astype(str), sort=True)["label_index"].first()


def _assign_patients(
    frame: pd.DataFrame, spec: PartitionSpec, rng: np.random.Generator
) -> dict[str, str]:
    patients = _patients(frame)
    n, k = len(patients), spec.sites
    if n < k * spec.min_patients:
        raise PartitionError(
            f"{n} patients cannot give {k} sites at least {spec.min_patients} patients each"
        )
    names = [f"site-{i + 1:0{max(2, len(str(k)))}d}" for i in range(k)]
    site_of = _draw(patients.to_numpy(), spec, rng)
    return {pid: names[s] for pid, s in zip(patients.index, site_of, strict=True)}


def _draw(labels: np.ndarray, spec: PartitionSpec, rng: np.random.Generator) -> np.ndarray:
    """Site index per patient: ``min_patients`` random patients per site, the rest skewed."""
    n, k = len(labels), spec.sites
    order = rng.permutation(n)
    out = np.empty(n, dtype=int)
    reserved = order[: k * spec.min_patients]
    out[reserved] = np.arange(reserved.size) % k
    rest = order[k * spec.min_patients :]
    if spec.kind == "iid":
        out[rest] = np.arange(rest.size) % k
    elif spec.kind == "quantity":
        share = rng.dirichlet(np.full(k, spec.alpha))
        out[rest] = rng.permutation(np.repeat(np.arange(k), rng.multinomial(rest.size, share)))
    else:  # dirichlet label skew: each class spread over the sites by its own proportions
        for label in np.unique(labels[rest]):
            members = rest[labels[rest] == label]
            share = rng.dirichlet(np.full(k, spec.alpha))
            counts = rng.multinomial(members.size, share)
            out[members] = rng.permutation(np.repeat(np.arange(k), counts))
    return out


# -- perturbations --------------------------------------------------------------------------


def _drop_modalities(
    frame: pd.DataFrame, task: TaskSpec, missing: dict[str, int], sites: list[str]
) -> None:
    problems = []
    for modality, count in missing.items():
        if modality not in task.modalities:
            problems.append(
                f"cannot drop {modality!r}: task {task.name!r} has modalities "
                f"{', '.join(task.modalities) or '(none)'}"
            )
        elif count >= len(sites):
            problems.append(f"{modality!r} missing at {count} of {len(sites)} sites leaves none")
    if len(missing) >= len(task.modalities) and task.modalities:
        problems.append("every modality would be missing at some site")
    if problems:
        raise PartitionError("invalid missing modalities: " + "; ".join(problems))
    for modality, count in missing.items():
        frame.loc[frame["site"].isin(sites[-count:]), modality] = ""


def _shift_intensities(
    frame: pd.DataFrame,
    task: TaskSpec,
    sites: list[str],
    scale: float,
    rng: np.random.Generator,
    image_dir: Path,
) -> None:
    if not task.modalities:
        raise PartitionError(
            f"an intensity shift needs image modalities; task {task.name!r} has none"
        )
    profiles = {site: (1.0, 1.0) for site in sites[:1]}  # the first site is the reference
    for site in sites[1:]:
        profiles[site] = (
            float(np.exp(rng.normal(0.0, 0.25 * scale))),
            float(np.exp(rng.normal(0.0, 0.3 * scale))),
        )
    for modality in task.modalities:
        new = []
        for site, cell in zip(frame["site"], frame[modality], strict=True):
            gain, gamma = profiles[site]
            if not cell or (gain, gamma) == (1.0, 1.0):
                new.append(cell)
                continue
            parts = [_shifted(Path(p), gain, gamma, image_dir / site) for p in cell.split(";")]
            new.append(";".join(parts))
        frame[modality] = new


def _shifted(source: Path, gain: float, gamma: float, folder: Path) -> str:
    """Write ``gain * x ** gamma`` (x in [0, 1]) of one image as PNG; return its path."""
    if source.is_dir():
        raise PartitionError(f"{source}: an intensity shift does not handle image folders (bags)")
    suffix = source.suffix.lower()
    if suffix == ".npy":
        array = np.load(source).astype(np.float64)
        top = float(array.max()) or 1.0
        x = np.clip(array / top, 0.0, 1.0)
    elif suffix in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"):
        with Image.open(source) as image:
            x = np.asarray(image.convert("L" if image.mode in ("L", "I", "I;16") else "RGB"))
        x = x.astype(np.float64) / 255.0
    else:
        raise PartitionError(f"{source}: an intensity shift handles PNG/JPEG/TIFF/BMP/NPY only")
    y = np.clip(gain * np.power(x, gamma), 0.0, 1.0)
    folder.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha1(str(source).encode()).hexdigest()[:16] + ".png"
    Image.fromarray(np.round(y * 255).astype(np.uint8)).save(folder / name)
    return str(folder / name)


def _site_summary(frame: pd.DataFrame, task: TaskSpec) -> dict[str, dict[str, Any]]:
    out = {}
    for site, rows in frame.groupby("site", sort=True):
        counts = np.bincount(rows["label_index"].astype(int), minlength=task.num_classes)
        out[str(site)] = {
            "patients": int(rows["patient_id"].nunique()),
            "rows": len(rows),
            "labels": dict(zip(task.classes, counts.tolist(), strict=True)),
            "missing": [m for m in task.modalities if (rows[m] == "").all()],
        }
    return out
