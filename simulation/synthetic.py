"""Synthetic dual-center B-mode + CEUS renal-tumour data (stand-in for the MUF-Net study).

The seed study grades renal cell carcinoma (WHO/ISUP low G1-G2 vs high G3-G4) from paired
B-mode and contrast-enhanced ultrasound (CEUS) images at two centres (74 low / 26 high
patients; fused AUC 0.909 vs about 0.84 for one modality). :func:`generate_dual_center`
writes a look-alike data set in the site data contract of ``DESIGN.md`` (grey PNG files plus
one ``manifest.csv``) so that the real loading path is exercised and a small federated run can
show learning on a CPU. Nothing here is real patient data.

Signal model
------------
Each patient has a grade ``y`` (0 = low, 1 = high) and two *independent* latent evidences,
one per modality::

    z_bmode = s * y + e1,    z_ceus = s * y + e2,    e1, e2 ~ N(0, 0.75**2),

with ``s = modality_signal``. Each latent alone separates the classes with AUC
``Phi(s / (0.75 * sqrt 2))`` (0.83 at ``s = 1``) and their sum with ``Phi(s / 0.75)`` (0.91),
matching the study's single vs fused AUCs, so fusion beats either modality because the two
carry independent evidence. A latent is squashed to an appearance score
``a = sigmoid(2.5 * (z - 0.5))`` in (0, 1) that drives the images:

* **B-mode** (grey-scale echo): ``a_bmode`` sets the lesion's *echotexture heterogeneity*
  (amplitude of a smooth random echogenicity field inside the lesion, plus anechoic cystic /
  necrotic foci whose area grows with ``a_bmode``) and its *margin irregularity* (amplitude
  of angular harmonics 3-7 deforming the lesion outline).
* **CEUS** (cortical-phase contrast): ``a_ceus`` sets *heterogeneous enhancement*, the size of
  a *non-enhancing (necrotic) core*, and *wash-out* (lesion enhancement falling below the
  renal parenchyma). The enhancing outline is a smooth ellipse, so the B-mode margin cue does
  not leak into CEUS.

Anatomy and nuisance
--------------------
An image shows a kidney-like ellipse (hypoechoic cortex, echogenic central sinus; on CEUS
enhancing parenchyma and a non-enhancing sinus) in surrounding tissue (echogenic perirenal
fat on B-mode, barely enhancing on CEUS), and an elliptical lesion of random position, size,
orientation and base echogenicity / enhancement (nuisances unrelated to grade, drawn per
patient). B-mode carries multiplicative, spatially correlated Rayleigh speckle (3 compounded
looks, then log compression); CEUS a finer multiplicative microbubble noise. A
patient has ``images_per_patient`` B-mode/CEUS pairs (one pair = one imaging plane): the
pairs share the patient's latents, anatomy and lesion and differ by small shifts, rotations,
scale, texture and speckle. Coordinates are relative to the image side, so ``image_size``
changes resolution only.

Scanner shift
-------------
The first site is the reference scanner. Other sites get a fixed scanner profile (cycling
through a small table), scaled by ``scanner_shift``: display gain, contrast (a power-law
curve), speckle grain size and point-spread blur. With ``scanner_shift = 0`` every site draws
from the same distribution; at 1 the second site is brighter, flatter, coarser-grained and
blurrier.

Output layout (paths in the manifest are relative to its folder)::

    out_dir/manifest.csv                                   patient_id, site, label, bmode, ceus
    out_dir/images/<site>/<patient_id>/<k>_bmode.png       8-bit grey, image_size x image_size
    out_dir/images/<site>/<patient_id>/<k>_ceus.png

One manifest row per image pair, no ``split`` column (the client makes the patient-level
split). Patient ids are opaque (``"A-0193"``: a site letter and a random number), unique
across sites and unrelated to the grade. The same ``seed`` gives byte-identical files.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from simulation._site_args import (
    check_image_size,
    check_images_per_patient,
    check_seed,
    is_real,
    parse_sites,
)

__all__ = ["DEFAULT_PATIENTS_PER_SITE", "MANIFEST_COLUMNS", "generate_dual_center"]

log = logging.getLogger(__name__)

DEFAULT_PATIENTS_PER_SITE: tuple[tuple[str, int], ...] = (("center-a", 60), ("center-b", 40))
"""Patients per site when none are given (100 in all, as in the seed study)."""

MANIFEST_COLUMNS: tuple[str, ...] = ("patient_id", "site", "label", "bmode", "ceus")
"""Columns of the written ``manifest.csv``, in order."""

_CLASSES = ("low", "high")
_MODALITIES = ("bmode", "ceus")
_LATENT_NOISE_SD = 0.75
_APPEARANCE_SLOPE = 2.5
_APPEARANCE_CENTRE = 0.5
_MIN_PER_CLASS = 2
_SPECKLE_LOOKS = 3


@dataclass(frozen=True)
class _Scanner:
    """Display and acquisition settings of one site's scanner (reference = all neutral)."""

    gain: float = 1.0  # multiplies the displayed intensity
    gamma: float = 1.0  # display power law: out = gain * in ** gamma (< 1 flattens contrast)
    grain: float = 1.0  # speckle correlation length, relative to the reference
    blur: float = 0.0  # extra point-spread blur, sigma in pixels per 96 px of image side


# Profiles for site 1, 2, ...; site 0 is the reference. scanner_shift scales the deviation.
_SCANNER_PROFILES: tuple[_Scanner, ...] = (
    _Scanner(gain=1.2, gamma=0.75, grain=1.8, blur=1.0),
    _Scanner(gain=0.8, gamma=1.3, grain=0.7, blur=0.5),
    _Scanner(gain=1.15, gamma=1.2, grain=1.4, blur=0.0),
)


@dataclass(frozen=True)
class _Patient:
    """Per-patient draws shared by all of a patient's image pairs."""

    grade: int
    a_bmode: float  # appearance score of the B-mode evidence, in (0, 1)
    a_ceus: float  # appearance score of the CEUS evidence, in (0, 1)
    kidney_axes: tuple[float, float]
    kidney_angle: float
    lesion_centre: tuple[float, float]  # in kidney coordinates, relative to the kidney axes
    lesion_axes: tuple[float, float]
    lesion_angle: float
    lesion_echo: float  # base echogenicity of the lesion (B-mode)
    lesion_enhancement: float  # base peak enhancement of the lesion (CEUS)
    margin_harmonics: np.ndarray  # (5, 2): amplitude, phase of harmonics 3..7
    core_offset: tuple[float, float]  # necrotic core centre, relative to the lesion axes


def generate_dual_center(
    out_dir: str | Path,
    *,
    patients_per_site: Mapping[str, int] | Iterable[tuple[str, int]] = DEFAULT_PATIENTS_PER_SITE,
    images_per_patient: tuple[int, int] = (2, 4),
    image_size: int = 96,
    high_grade_fraction: float = 0.26,
    modality_signal: float = 1.0,
    scanner_shift: float = 1.0,
    seed: int = 0,
) -> Path:
    """Write a synthetic dual-center B-mode + CEUS RCC-grading data set.

    Args:
        out_dir: folder to write into (created if needed); existing files of the same names
            are overwritten.
        patients_per_site: site name -> number of patients, as a mapping or ``(name, n)``
            pairs; default ``(("center-a", 60), ("center-b", 40))``. The first site is the
            reference scanner. Each site needs at least 4 patients (2 per class).
        images_per_patient: inclusive ``(min, max)`` number of B-mode/CEUS pairs per patient,
            drawn uniformly; default ``(2, 4)``.
        image_size: side of the square images in pixels (>= 16); default 96.
        high_grade_fraction: share of high-grade patients in every site, in (0, 1); default
            0.26 (26 of 100 in the study). Rounded per site, with at least 2 per class.
        modality_signal: ``s``, the class separation of each modality's latent evidence in
            units where the latent noise has sd 0.75; 0 makes the labels unpredictable;
            default 1.0.
        scanner_shift: scale of the between-site scanner differences (gain, contrast,
            speckle grain, blur), >= 0; 0 makes the sites identically distributed; default 1.
        seed: random seed; the same seed and arguments give byte-identical files.

    Returns:
        Path of the written ``manifest.csv`` (columns :data:`MANIFEST_COLUMNS`, one row per
        image pair, image paths relative to the manifest's folder).

    Raises:
        ValueError: listing every invalid argument.
    """
    sites = _validate(
        patients_per_site=patients_per_site,
        images_per_patient=images_per_patient,
        image_size=image_size,
        high_grade_fraction=high_grade_fraction,
        modality_signal=modality_signal,
        scanner_shift=scanner_shift,
        seed=seed,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    grid = _grid(image_size)
    rows: list[dict[str, str]] = []
    summary: list[str] = []
    for site_index, (site, n_patients) in enumerate(sites):
        site_rows, grades = _write_site(
            out,
            site=site,
            site_index=site_index,
            n_patients=n_patients,
            grid=grid,
            images_per_patient=images_per_patient,
            high_grade_fraction=high_grade_fraction,
            modality_signal=modality_signal,
            scanner_shift=scanner_shift,
            seed=seed,
        )
        rows.extend(site_rows)
        n_high = int(grades.sum())
        summary.append(
            f"{site}: {n_patients - n_high} low + {n_high} high patients, "
            f"{len(site_rows)} image pairs"
        )
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    log.info("synthetic dual-center data in %s: %s", manifest, "; ".join(summary))
    return manifest


def _write_site(
    out: Path,
    *,
    site: str,
    site_index: int,
    n_patients: int,
    grid: _Grid,
    images_per_patient: tuple[int, int],
    high_grade_fraction: float,
    modality_signal: float,
    scanner_shift: float,
    seed: int,
) -> tuple[list[dict[str, str]], np.ndarray]:
    """Write one site's PNGs; return its manifest rows and its patients' 0/1 grades."""
    site_rng = np.random.default_rng([seed, site_index])
    scanner = _site_scanner(site_index, scanner_shift)
    grades = _site_grades(n_patients, high_grade_fraction, site_rng, site)
    ids = _patient_ids(site_index, n_patients, site_rng)
    lo, hi = images_per_patient
    rows: list[dict[str, str]] = []
    for patient_index, (patient_id, grade) in enumerate(zip(ids, grades, strict=True)):
        # one stream per patient: a patient's images do not depend on how many others came first
        rng = np.random.default_rng([seed, site_index, patient_index, 1])
        patient = _draw_patient(int(grade), modality_signal, rng)
        (out / "images" / site / patient_id).mkdir(parents=True, exist_ok=True)
        for k in range(int(rng.integers(lo, hi + 1))):
            row = {"patient_id": patient_id, "site": site, "label": _CLASSES[int(grade)]}
            images = _render_pair(patient, grid, scanner, rng)
            for modality, image in zip(_MODALITIES, images, strict=True):
                relative = Path("images", site, patient_id, f"{k}_{modality}.png")
                _write_png(out / relative, image)
                row[modality] = relative.as_posix()
            rows.append(row)
    return rows, grades


# --------------------------------------------------------------------------- validation


def _validate(
    *,
    patients_per_site: Mapping[str, int] | Iterable[tuple[str, int]],
    images_per_patient: tuple[int, int],
    image_size: int,
    high_grade_fraction: float,
    modality_signal: float,
    scanner_shift: float,
    seed: int,
) -> list[tuple[str, int]]:
    """Check every argument, collect all problems and raise one ValueError; return the sites."""
    problems: list[str] = []
    sites = parse_sites(
        patients_per_site,
        min_per_class=_MIN_PER_CLASS,
        n_classes=2,
        problems=problems,
    )
    check_images_per_patient(images_per_patient, problems)
    check_image_size(image_size, problems)
    if not is_real(high_grade_fraction) or not 0.0 < high_grade_fraction < 1.0:
        problems.append(
            f"high_grade_fraction must be strictly between 0 and 1, got {high_grade_fraction!r}"
        )
    if not is_real(modality_signal) or modality_signal < 0:
        problems.append(f"modality_signal must be a finite number >= 0, got {modality_signal!r}")
    if not is_real(scanner_shift) or scanner_shift < 0:
        problems.append(f"scanner_shift must be a finite number >= 0, got {scanner_shift!r}")
    check_seed(seed, problems)
    if problems:
        raise ValueError("invalid synthetic data settings:\n- " + "\n- ".join(problems))
    if modality_signal == 0:
        log.warning(
            "modality_signal=0: the images carry no grade information; use this only as a "
            "null control (any AUC above chance means leakage)"
        )
    return sites


# --------------------------------------------------------------------------- cohort


def _site_scanner(site_index: int, scanner_shift: float) -> _Scanner:
    """The scanner of site ``site_index``, its deviation from the reference scaled."""
    if site_index == 0:
        return _Scanner()
    profile = _SCANNER_PROFILES[(site_index - 1) % len(_SCANNER_PROFILES)]
    return _Scanner(
        gain=profile.gain**scanner_shift,
        gamma=profile.gamma**scanner_shift,
        grain=profile.grain**scanner_shift,
        blur=profile.blur * scanner_shift,
    )


def _site_grades(n: int, fraction: float, rng: np.random.Generator, site: str) -> np.ndarray:
    """Shuffled 0/1 grades with ``round(n * fraction)`` high-grade, at least 2 per class."""
    n_high = int(round(n * fraction))
    clamped = min(max(n_high, _MIN_PER_CLASS), n - _MIN_PER_CLASS)
    if clamped != n_high:
        log.warning(
            "site %s: %d patients x high_grade_fraction %.3f gives %d high-grade; using %d so "
            "that each class has at least %d patients",
            site,
            n,
            fraction,
            n_high,
            clamped,
            _MIN_PER_CLASS,
        )
    grades = np.zeros(n, dtype=np.int64)
    grades[:clamped] = 1
    return rng.permutation(grades)


def _patient_ids(site_index: int, n: int, rng: np.random.Generator) -> list[str]:
    """Opaque ids: a site prefix (A, B, ... then S27, ...) and distinct random numbers."""
    prefix = chr(ord("A") + site_index) if site_index < 26 else f"S{site_index + 1}"
    width = max(4, len(str(10 * n)))
    numbers = rng.choice(10**width, size=n, replace=False)
    return [f"{prefix}-{number:0{width}d}" for number in numbers]


def _appearance(z: float) -> float:
    """Appearance score in (0, 1) of a latent evidence ``z`` (monotone, so no AUC is lost)."""
    return float(1.0 / (1.0 + math.exp(-_APPEARANCE_SLOPE * (z - _APPEARANCE_CENTRE))))


def _draw_patient(grade: int, modality_signal: float, rng: np.random.Generator) -> _Patient:
    """Latent grade evidence (independent per modality) and grade-free anatomy nuisances."""
    z_bmode = modality_signal * grade + rng.normal(0.0, _LATENT_NOISE_SD)
    z_ceus = modality_signal * grade + rng.normal(0.0, _LATENT_NOISE_SD)
    major = rng.uniform(0.22, 0.34)
    harmonics = np.stack([rng.normal(0.0, 1.0, 5), rng.uniform(0.0, 2 * np.pi, 5)], axis=1)
    harmonics[:, 0] /= np.sqrt(np.sum(harmonics[:, 0] ** 2) / 2.0)  # unit rms outline wobble
    return _Patient(
        grade=grade,
        a_bmode=_appearance(z_bmode),
        a_ceus=_appearance(z_ceus),
        kidney_axes=(0.85 * rng.uniform(0.94, 1.06), 0.58 * rng.uniform(0.9, 1.1)),
        kidney_angle=rng.uniform(-0.35, 0.35),
        lesion_centre=(rng.uniform(-0.4, 0.4), rng.uniform(-0.3, 0.3)),
        lesion_axes=(major, major * rng.uniform(0.7, 1.0)),
        lesion_angle=rng.uniform(0.0, np.pi),
        lesion_echo=rng.uniform(0.35, 0.75),
        lesion_enhancement=rng.uniform(0.65, 0.9),
        margin_harmonics=harmonics,
        core_offset=(rng.uniform(-0.2, 0.2), rng.uniform(-0.2, 0.2)),
    )


# --------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class _Grid:
    """Pixel-centre coordinates in [-1, 1] of a square ``(H, W)`` image."""

    x: np.ndarray
    y: np.ndarray
    size: int

    @property
    def px(self) -> float:
        """One pixel in grid units."""
        return 2.0 / self.size

    @property
    def scale(self) -> float:
        """Pixel lengths in this module are given for a 96 px image; multiply by this."""
        return self.size / 96.0


@dataclass(frozen=True)
class _Plane:
    """Soft masks in [0, 1] and lesion coordinates of one imaging plane, all ``(H, W)``."""

    kidney: np.ndarray
    medulla: np.ndarray
    sinus: np.ndarray
    lesion_smooth: np.ndarray  # elliptical lesion outline (CEUS enhancing extent)
    lesion_irregular: np.ndarray  # outline with grade-dependent margin wobble (B-mode)
    lesion_u: np.ndarray  # lesion coordinates scaled by its semi-axes (1 = on the ellipse)
    lesion_v: np.ndarray


def _grid(size: int) -> _Grid:
    axis = (np.arange(size, dtype=np.float64) + 0.5) / size * 2.0 - 1.0
    y, x = np.meshgrid(axis, axis, indexing="ij")
    return _Grid(x=x, y=y, size=size)


def _rotate(x: np.ndarray, y: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = math.cos(angle), math.sin(angle)
    return c * x + s * y, -s * x + c * y


def _soft(signed: np.ndarray, width: float) -> np.ndarray:
    """Smooth step: 1 where ``signed > 0``, 0 where below, over about ``width`` (anti-aliasing)."""
    return 0.5 * (1.0 + np.tanh(signed / width))


def _smooth_field(size: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """``(H, W)`` Gaussian random field, correlation length ``sigma`` px, zero mean, unit sd."""
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-12)


def _speckle(size: int, grain: float, looks: int, rng: np.random.Generator) -> np.ndarray:
    """Compounded speckle: mean of ``looks`` Rayleigh fields (|correlated complex Gaussian|).

    Each look is normalised to mean 1; ``grain`` is the correlation length in pixels.
    """
    parts = rng.standard_normal((looks, 2, size, size))
    parts = ndimage.gaussian_filter(parts, (0.0, 0.0, grain, grain), mode="wrap")
    magnitude = np.hypot(parts[:, 0], parts[:, 1])
    magnitude /= magnitude.mean(axis=(1, 2), keepdims=True)
    return magnitude.mean(axis=0)


def _plane(patient: _Patient, grid: _Grid, rng: np.random.Generator) -> _Plane:
    """Anatomy of one plane: the patient's kidney and lesion, slightly shifted/rotated/scaled."""
    edge = 1.2 * grid.px
    shift = rng.normal(0.0, 0.03, 2)
    zoom = rng.uniform(0.95, 1.05)
    angle = patient.kidney_angle + rng.normal(0.0, 0.05)
    kx, ky = _rotate((grid.x - shift[0]) / zoom, (grid.y - shift[1]) / zoom, angle)
    ax, ay = patient.kidney_axes
    rho = np.hypot(kx / ax, ky / ay)
    sinus_rho = np.hypot(kx / (0.42 * ax), ky / (0.3 * ay))
    cx = patient.lesion_centre[0] * ax + rng.normal(0.0, 0.02)
    cy = patient.lesion_centre[1] * ay + rng.normal(0.0, 0.02)
    lx, ly = _rotate(kx - cx, ky - cy, patient.lesion_angle + rng.normal(0.0, 0.08))
    la, lb = (axis * rng.uniform(0.95, 1.05) for axis in patient.lesion_axes)
    u, v = lx / la, ly / lb
    lesion_rho = np.hypot(u, v)
    theta = np.arctan2(v, u)[None]
    orders = np.arange(3, 3 + len(patient.margin_harmonics))[:, None, None]
    amplitude = patient.margin_harmonics[:, 0, None, None]
    phase = patient.margin_harmonics[:, 1, None, None]
    wobble = np.sum(amplitude * np.cos(orders * theta + phase), axis=0)
    margin = 0.02 + 0.2 * patient.a_bmode
    return _Plane(
        kidney=_soft(1.0 - rho, edge / ay),
        medulla=_soft(0.72 - rho, edge / ay),
        sinus=_soft(1.0 - sinus_rho, 3.0 * edge / ay),
        lesion_smooth=_soft(1.0 - lesion_rho, edge / lb),
        lesion_irregular=_soft(1.0 + margin * wobble - lesion_rho, edge / lb),
        lesion_u=u,
        lesion_v=v,
    )


def _bmode(
    patient: _Patient, plane: _Plane, grid: _Grid, scanner: _Scanner, rng: np.random.Generator
) -> np.ndarray:
    """B-mode: echogenicity map x compounded speckle, log-compressed; ``(H, W)`` in ~[0, 1]."""
    n, scale = grid.size, grid.scale
    a = patient.a_bmode
    texture = _smooth_field(n, 3.0 * scale, rng)
    lesion = patient.lesion_echo * np.clip(1.0 + (0.05 + 0.6 * a) * texture, 0.05, None)
    # anechoic (cystic / necrotic) foci: the field's peaks above a threshold that falls with a
    foci = _soft(_smooth_field(n, 2.0 * scale, rng) - (2.4 - 1.8 * a), 0.3)
    lesion = lesion + foci * (0.05 - lesion)
    tissue = 0.5 + 0.05 * _smooth_field(n, 6.0 * scale, rng)  # echogenic perirenal fat
    echo = tissue + plane.kidney * (0.3 - tissue) + 0.45 * plane.sinus
    echo = echo + plane.lesion_irregular * (lesion - echo)
    image = echo * _speckle(n, 0.9 * scale * scanner.grain, _SPECKLE_LOOKS, rng)
    return np.log1p(4.0 * image) / math.log1p(4.0)


def _ceus(
    patient: _Patient, plane: _Plane, grid: _Grid, scanner: _Scanner, rng: np.random.Generator
) -> np.ndarray:
    """CEUS: enhancement map x microbubble noise, mildly compressed; ``(H, W)`` in ~[0, 1]."""
    n, scale = grid.size, grid.scale
    a = patient.a_ceus
    core_radius = 0.75 * min(max((a - 0.25) / 0.75, 0.0), 1.0)
    core_rho = np.hypot(
        plane.lesion_u - patient.core_offset[0], plane.lesion_v - patient.core_offset[1]
    )
    core = _soft(core_radius - core_rho, 2.4 * grid.px) * plane.lesion_smooth
    heterogeneity = 0.06 + 0.4 * a
    washout = 1.0 - 0.45 * a
    texture = _smooth_field(n, 3.0 * scale, rng)
    lesion = (
        patient.lesion_enhancement * washout * np.clip(1.0 + heterogeneity * texture, 0.05, None)
    )
    lesion = lesion + core * (0.04 - lesion)
    parenchyma = 0.65 - 0.1 * plane.medulla - 0.35 * plane.sinus
    background = 0.1 + 0.03 * _smooth_field(n, 6.0 * scale, rng)
    enhancement = background + plane.kidney * (parenchyma - background)
    enhancement = enhancement + plane.lesion_smooth * (lesion - enhancement)
    bubbles = _smooth_field(n, 0.6 * scale * scanner.grain, rng)
    image = enhancement * (1.0 + 0.3 * bubbles) + 0.02 * rng.standard_normal((n, n))
    return np.clip(image, 0.0, None) ** 0.8


def _render_pair(
    patient: _Patient, grid: _Grid, scanner: _Scanner, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One imaging plane of ``patient``: B-mode and CEUS ``(H, W)`` uint8 images."""
    plane = _plane(patient, grid, rng)
    bmode = _bmode(patient, plane, grid, scanner, rng)
    ceus = _ceus(patient, plane, grid, scanner, rng)
    return _display(bmode, scanner, grid.scale), _display(ceus, scanner, grid.scale)


def _display(image: np.ndarray, scanner: _Scanner, scale: float) -> np.ndarray:
    """Scanner point-spread blur, display curve and gain; ``(H, W)`` uint8."""
    if scanner.blur > 0:
        image = ndimage.gaussian_filter(image, scanner.blur * scale, mode="nearest")
    image = np.clip(image / 1.2, 0.0, 1.0) ** scanner.gamma * scanner.gain
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def _write_png(path: Path, image: np.ndarray) -> None:
    Image.fromarray(image).save(path, format="PNG")
