"""Synthetic renal biopsies for glomerular disease (stand-in for the CMUS-Net study).

CMUS-Net classifies a biopsy as IgA nephropathy (IgAN), membranous nephropathy (MN) or lupus
nephritis (LN) from a bag of transmission electron microscopy (TEM) fields, one light
microscopy (OM) image and one immunofluorescence (IM) image. :func:`generate_biopsy` writes a
look-alike data set in the site data contract of ``DESIGN.md`` (PNG files and one
``manifest.csv`` with a ``site`` column and a bag column ``tem``) so that the real loading path
runs and a small federated run can learn on a CPU. Nothing here is patient data.

What differs by class (a cartoon of the textbook patterns, strength ``modality_signal``):

* TEM: IgAN dark deposit clusters in the mesangial patch (centre); MN a regular row of small
  dark deposits on one side of the membrane (subepithelial "spikes"); LN deposits on both
  sides of the membrane plus a striped "fingerprint" texture.
* OM (RGB, PAS-like): IgAN many nuclei in the centre (mesangial hypercellularity); MN thick
  capillary loop walls; LN nuclei spread over the tuft plus a crescent at the capsule.
* IM (green): IgAN a granular glow in the centre (mesangial IgA); MN fine dots along the
  capillary loops (granular IgG); LN both, brighter ("full house").

Every TEM field shows the basement membrane as a band at a random angle; a share of the fields
(``blank_fraction``) shows no deposits at all, so a bag's class is carried by some of its
instances only (what the sparse top-k MIL pooling is for). Each patient's pattern strength is
drawn in ``[0.5, 1] * modality_signal`` and every image gets noise.

Site shift: the first site is the reference lab; the others get a fixed profile (cycled),
scaled by ``site_shift``: stain colour of OM, exposure of IM, contrast and noise of TEM. Each
site has its own class mix.

Output layout (paths relative to the manifest's folder)::

    out_dir/manifest.csv                                patient_id, site, label, tem, om, im
    out_dir/images/<site>/<patient_id>/tem/field<k>.png  8-bit grey, 2-6 per patient
    out_dir/images/<site>/<patient_id>/om.png            8-bit RGB
    out_dir/images/<site>/<patient_id>/im.png            8-bit RGB (green channel)

The ``tem`` cell is the bag's folder for even-numbered patients and the ``;``-separated list of
its files for the others, so both bag spellings are exercised. The same ``seed`` gives
byte-identical files.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from simulation._site_args import check_image_size, check_seed, is_int, is_real, parse_sites

__all__ = [
    "CLASSES",
    "DEFAULT_PATIENTS_PER_SITE",
    "MANIFEST_COLUMNS",
    "MODALITIES",
    "generate_biopsy",
]

log = logging.getLogger(__name__)

CLASSES: tuple[str, ...] = ("IgAN", "MN", "LN")
"""Class names, in the ``glomerular-disease`` task's order."""

MODALITIES: tuple[str, ...] = ("tem", "om", "im")
"""Modality columns, in the task's order; ``tem`` is the bag."""

MANIFEST_COLUMNS: tuple[str, ...] = ("patient_id", "site", "label", *MODALITIES)

DEFAULT_PATIENTS_PER_SITE: tuple[tuple[str, int], ...] = (
    ("hospital-a", 40),
    ("hospital-b", 36),
    ("hospital-c", 32),
)

DEFAULT_CLASS_MIX: tuple[tuple[float, float, float], ...] = (
    (0.50, 0.25, 0.25),  # IgAN is the commonest glomerulonephritis in East Asian centres
    (0.30, 0.45, 0.25),
    (0.25, 0.25, 0.50),  # a rheumatology referral centre: much lupus
)


@dataclass(frozen=True)
class _Lab:
    """A site's imaging profile."""

    stain: tuple[float, float, float] = (1.0, 1.0, 1.0)  # OM channel gains
    exposure: float = 1.0  # IM gain
    contrast: float = 1.0  # TEM contrast
    noise: float = 1.0  # TEM noise multiplier


_LAB_PROFILES = (
    _Lab(),
    _Lab(stain=(0.85, 1.1, 1.15), exposure=1.3, contrast=0.8, noise=1.4),
    _Lab(stain=(1.15, 0.9, 0.85), exposure=0.75, contrast=1.2, noise=0.8),
    _Lab(stain=(1.0, 0.85, 1.2), exposure=1.15, contrast=0.9, noise=1.2),
)


def generate_biopsy(
    out_dir: str | Path,
    *,
    patients_per_site: Mapping[str, int] | Iterable[tuple[str, int]] = DEFAULT_PATIENTS_PER_SITE,
    class_mix: Mapping[str, Sequence[float]] | None = None,
    tem_per_patient: Sequence[int] = (2, 6),
    image_size: int = 64,
    modality_signal: float = 1.0,
    blank_fraction: float = 0.4,
    site_shift: float = 1.0,
    seed: int = 0,
) -> Path:
    """Write a synthetic tri-modal biopsy data set; return the manifest path.

    Args:
        out_dir: output folder (created; existing files with the same names are replaced).
        patients_per_site: ``{site: patients}`` (or pairs); >= 2 patients per class each.
        class_mix: ``{site: (IgAN, MN, LN) shares}``; sites without an entry cycle through
            ``DEFAULT_CLASS_MIX``.
        tem_per_patient: ``(min, max)`` TEM fields per biopsy. Default (2, 6).
        image_size: side of every image in pixels (>= 16). Default 64.
        modality_signal: strength of the class patterns (0 = none). Default 1.0.
        blank_fraction: share of TEM fields without deposits, in [0, 1). Default 0.4.
        site_shift: strength of the per-site imaging differences (0 = none). Default 1.0.
        seed: seed of every draw. Default 0.

    Returns:
        ``out_dir / "manifest.csv"``.

    Raises:
        ValueError: listing every bad argument.
    """
    problems: list[str] = []
    sites = parse_sites(
        patients_per_site, min_per_class=2, n_classes=len(CLASSES), problems=problems
    )
    check_image_size(image_size, problems)
    check_seed(seed, problems)
    tem = list(tem_per_patient) if isinstance(tem_per_patient, Sequence) else []
    if len(tem) != 2 or not all(is_int(v) for v in tem) or not 1 <= tem[0] <= tem[1]:
        problems.append(
            f"tem_per_patient must be (min, max) integers with 1 <= min <= max, "
            f"got {tem_per_patient!r}"
        )
    for key, value, low, high in (
        ("modality_signal", modality_signal, 0.0, 10.0),
        ("site_shift", site_shift, 0.0, 5.0),
        ("blank_fraction", blank_fraction, 0.0, 0.999),
    ):
        if not is_real(value) or not low <= value <= high:
            problems.append(f"{key} must be a number in [{low}, {high}], got {value!r}")
    mixes = _site_mixes([name for name, _ in sites], class_mix or {}, problems)
    if problems:
        raise ValueError("generate_biopsy: " + "; ".join(problems))

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, str]] = []
    for index, (site, n) in enumerate(sites):
        rng = np.random.default_rng([seed, index])
        base = _LAB_PROFILES[index % len(_LAB_PROFILES)]
        lab = _scaled(base, site_shift)
        labels = _labels(n, mixes[site], rng)
        for k, label in enumerate(labels):
            patient = f"{site[:1].upper()}{index}-{k:04d}"
            rows.append(
                _write_patient(
                    out,
                    site=site,
                    patient=patient,
                    label=int(label),
                    n_tem=int(rng.integers(tem[0], tem[1] + 1)),
                    as_folder=k % 2 == 0,
                    size=image_size,
                    signal=modality_signal,
                    blank=blank_fraction,
                    lab=lab,
                    rng=rng,
                )
            )
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(MANIFEST_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    log.info("synthetic biopsies: %d patients at %d sites in %s", len(rows), len(sites), out)
    return manifest


def _site_mixes(
    names: list[str], given: Mapping[str, Sequence[float]], problems: list[str]
) -> dict[str, tuple[float, ...]]:
    unknown = sorted(set(given) - set(names))
    if unknown:
        problems.append(f"class_mix names unknown sites {unknown}; sites are {names}")
    mixes = {}
    for i, name in enumerate(names):
        mix = given.get(name, DEFAULT_CLASS_MIX[i % len(DEFAULT_CLASS_MIX)])
        if (
            not isinstance(mix, Sequence)
            or len(mix) != len(CLASSES)
            or not all(is_real(v) and v > 0 for v in mix)
        ):
            problems.append(
                f"class_mix[{name!r}] must be {len(CLASSES)} positive shares "
                f"({', '.join(CLASSES)}), got {mix!r}"
            )
            continue
        total = float(sum(mix))
        mixes[name] = tuple(float(v) / total for v in mix)
    return mixes


def _labels(n: int, mix: tuple[float, ...], rng: np.random.Generator) -> np.ndarray:
    """``n`` labels in the site's proportions with at least 2 per class, shuffled."""
    counts = np.maximum(2, np.floor(np.asarray(mix) * n).astype(int))
    while counts.sum() > n:
        counts[int(np.argmax(counts))] -= 1
    while counts.sum() < n:
        counts[int(np.argmax(np.asarray(mix) * n - counts))] += 1
    labels = np.repeat(np.arange(len(CLASSES)), counts)
    return rng.permutation(labels)


def _scaled(lab: _Lab, shift: float) -> _Lab:
    def toward(value: float) -> float:
        return 1.0 + shift * (value - 1.0)

    return _Lab(
        stain=tuple(toward(v) for v in lab.stain),  # type: ignore[arg-type]
        exposure=toward(lab.exposure),
        contrast=toward(lab.contrast),
        noise=toward(lab.noise),
    )


# -- rendering ------------------------------------------------------------------------------


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    axis = (np.arange(size) + 0.5) / size * 2 - 1  # [-1, 1]
    return np.meshgrid(axis, axis, indexing="ij")


def _blobs(
    size: int, centres: np.ndarray, radius: float, yy: np.ndarray, xx: np.ndarray
) -> np.ndarray:
    """Sum of soft discs of ``radius`` at ``centres`` ``(K, 2)`` in [-1, 1] coordinates."""
    out = np.zeros((size, size))
    for cy, cx in centres:
        out += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
    return np.clip(out, 0, 1)


def _noise(size: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma)
    return field / (field.std() + 1e-8)


def _tem(
    label: int, strength: float, blank: bool, lab: _Lab, size: int, rng: np.random.Generator
) -> np.ndarray:
    yy, xx = _grid(size)
    angle = rng.uniform(0, np.pi)
    offset = rng.uniform(-0.2, 0.2)
    along = np.cos(angle) * yy + np.sin(angle) * xx  # coordinate along the membrane normal
    tang = -np.sin(angle) * yy + np.cos(angle) * xx
    distance = along - offset
    image = 0.62 + 0.08 * _noise(size, size / 20, rng)
    image -= 0.25 * np.exp(-(distance**2) / (2 * 0.06**2))  # the basement membrane band
    if not blank and strength > 0:
        normal = np.array([np.cos(angle), np.sin(angle)])
        tangent = np.array([-np.sin(angle), np.cos(angle)])

        def along_band(side: float, count: int, spread: float) -> np.ndarray:
            t = rng.uniform(-0.9, 0.9, count)
            d = offset + side + rng.normal(0, spread, count)
            return d[:, None] * normal + t[:, None] * tangent

        if label == 0:  # IgAN: clustered mesangial deposits near the centre
            centre = rng.uniform(-0.3, 0.3, 2)
            deposits = centre + rng.normal(0, 0.15, (int(rng.integers(5, 9)), 2))
            dark = _blobs(size, deposits, 0.07, yy, xx)
        elif label == 1:  # MN: a regular row of small subepithelial deposits
            dark = _blobs(size, along_band(0.1, int(rng.integers(7, 11)), 0.015), 0.035, yy, xx)
        else:  # LN: deposits on both sides plus fingerprint stripes
            both = np.concatenate([along_band(0.1, 4, 0.02), along_band(-0.1, 4, 0.02)], axis=0)
            dark = _blobs(size, both, 0.045, yy, xx)
            stripes = 0.5 + 0.5 * np.sin(tang * 40 + rng.uniform(0, 6.3))
            dark = np.maximum(dark, 0.6 * stripes * np.exp(-(distance**2) / (2 * 0.25**2)))
        image -= 0.35 * strength * dark
    image = 0.5 + lab.contrast * (image - 0.5)
    image += 0.06 * lab.noise * rng.standard_normal((size, size))
    return np.clip(image, 0, 1)


def _om(label: int, strength: float, lab: _Lab, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = _grid(size)
    centre = rng.uniform(-0.1, 0.1, 2)
    r = np.hypot(yy - centre[0], xx - centre[1])
    tuft = np.clip(1.2 - r / 0.7, 0, 1)
    loops = np.zeros((size, size))
    for _ in range(6):  # capillary loops: rings inside the tuft
        c = centre + rng.uniform(-0.4, 0.4, 2)
        rad = rng.uniform(0.1, 0.18)
        width = 0.015 + (0.03 * strength if label == 1 else 0.0)
        loops += np.exp(-((np.hypot(yy - c[0], xx - c[1]) - rad) ** 2) / (2 * width**2))
    loops = np.clip(loops, 0, 1) * tuft
    nuclei_count = 6 + (int(18 * strength) if label in (0, 2) else 0)
    spread = 0.25 if label == 0 else 0.45
    nuclei = _blobs(size, centre + rng.normal(0, spread, (nuclei_count, 2)), 0.03, yy, xx)
    nuclei *= tuft > 0
    crescent = np.zeros((size, size))
    if label == 2 and strength > 0:
        phase = rng.uniform(0, 2 * np.pi)
        theta = np.arctan2(yy - centre[0], xx - centre[1])
        ring = np.exp(-((r - 0.8) ** 2) / (2 * 0.06**2))
        crescent = strength * ring * np.clip(np.cos(theta - phase), 0, 1)
    pink = 0.9 - 0.35 * tuft - 0.3 * loops - 0.4 * crescent
    purple = 0.55 * nuclei
    texture = 0.04 * _noise(size, 1.0, rng)
    rgb = np.stack(
        [
            pink - 0.2 * purple + texture,
            pink - 0.45 * loops - 0.5 * purple + texture,
            pink + 0.05 * purple + texture,
        ],
        axis=-1,
    )
    return np.clip(rgb * np.asarray(lab.stain), 0, 1)


def _im(label: int, strength: float, lab: _Lab, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = _grid(size)
    centre = rng.uniform(-0.1, 0.1, 2)
    glow = np.zeros((size, size))
    if label in (0, 2):  # mesangial granular deposits
        glow += _blobs(size, centre + rng.normal(0, 0.2, (14, 2)), 0.06, yy, xx)
    if label in (1, 2):  # fine granular dots along the capillary loops
        theta = rng.uniform(0, 2 * np.pi, 40)
        rad = rng.uniform(0.35, 0.6, 40)
        dots = centre + np.stack([rad * np.sin(theta), rad * np.cos(theta)], axis=1)
        glow += _blobs(size, dots, 0.025, yy, xx)
    gain = 1.3 if label == 2 else 1.0
    background = 0.08 + 0.03 * _noise(size, 2.0, rng)
    green = background + 0.55 * gain * strength * np.clip(glow, 0, 1)
    green = np.clip(lab.exposure * green + 0.04 * rng.standard_normal((size, size)), 0, 1)
    zeros = np.zeros_like(green)
    return np.stack([zeros, green, 0.15 * green], axis=-1)


def _save(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(pixels * 255).astype(np.uint8)).save(path)


def _write_patient(
    out: Path,
    *,
    site: str,
    patient: str,
    label: int,
    n_tem: int,
    as_folder: bool,
    size: int,
    signal: float,
    blank: float,
    lab: _Lab,
    rng: np.random.Generator,
) -> dict[str, str]:
    folder = Path("images") / site / patient
    strength = signal * rng.uniform(0.5, 1.0)
    blanks = rng.random(n_tem) < blank
    blanks[int(rng.integers(n_tem))] = False  # at least one informative field per biopsy
    fields = []
    for k in range(n_tem):
        name = folder / "tem" / f"field{k}.png"
        _save(out / name, _tem(label, strength, bool(blanks[k]), lab, size, rng))
        fields.append(name.as_posix())
    _save(out / folder / "om.png", _om(label, strength, lab, size, rng))
    _save(out / folder / "im.png", _im(label, strength, lab, size, rng))
    return {
        "patient_id": patient,
        "site": site,
        "label": CLASSES[label],
        "tem": (folder / "tem").as_posix() if as_folder else ";".join(fields),
        "om": (folder / "om.png").as_posix(),
        "im": (folder / "im.png").as_posix(),
    }
