"""Synthetic three-hospital cervical lymph-node ultrasound (stand-in for the lymph-node study).

The seed study (586 patients at three hospitals) classifies cervical lymph nodes as
metastatic, lymphoma or benign from three ultrasound modalities: 2D grey-scale, colour Doppler
flow imaging (CDFI) and strain elastography, with a ResNet per modality and a fused model.
:func:`generate_lymph_node` writes a look-alike data set in the site data contract of
``DESIGN.md`` (PNG files plus one ``manifest.csv`` with a ``site`` column) so that the real
loading path runs and a small federated run can learn on a CPU. Nothing here is patient data.

Signal model
------------
Each patient has a class ``y`` and, per modality, a few appearance parameters in [0, 1]::

    value = centre + s * (mean[y] - centre) + e,    e ~ N(0, noise_sd**2), clipped to [0, 1]

with ``s = modality_signal``, ``centre`` the mean of the three class means, and an
independent ``e`` per parameter and patient. The class means follow the sonographic
criteria clinicians use:

=================  ==========  ========  ======  ==================================================
parameter          metastatic  lymphoma  benign  how it is drawn
=================  ==========  ========  ======  ==================================================
2D roundness       0.70        0.75      0.25    short/long axis ratio ``0.45 + 0.5 * roundness``
2D hilum           0.20        0.35      0.85    echogenic fatty hilum along the long axis
2D echo            0.55        0.20      0.45    cortex echogenicity (lymphoma: markedly hypoechoic)
2D heterogeneity   0.75        0.40      0.20    amplitude of cortical echo texture and cystic foci
CDFI central       0.15        0.65      0.50    vessels in the hilar band
CDFI peripheral    0.70        0.55      0.10    vessels in a ring under the capsule
elasto stiffness   0.80        0.45      0.20    strain colour: red soft, green medium, blue hard
elasto patchiness  0.70        0.35      0.20    amplitude of stiffness heterogeneity
=================  ==========  ========  ======  ==================================================

Each modality alone separates some pairs of classes better than others (2D: benign vs
malignant; CDFI: vessel pattern; elastography: metastatic vs the rest), so the fused model
beats any one modality. With the default ``noise_sd = 0.25`` an ideal reader of the latent
parameters (LDA, measured on 2,000 draws) reaches accuracy 0.87 / 0.79 / 0.72 on 2D / CDFI /
elastography alone and 0.95 on all three. The node's outline (hence its roundness) shows faintly
in the grey background of the CDFI and elastography images too, as on a real screen.

Scanner shift and class mix
---------------------------
The first site is the reference scanner; the others get a fixed profile (cycling through a
small table) scaled by ``scanner_shift``: display gain, contrast curve, speckle grain, blur
and a colour balance of the CDFI / elastography overlays. Each site has its own class mix
(``class_mix``; by default an oncology centre rich in metastases, a general hospital rich in
benign nodes and a haematology centre rich in lymphoma).

Output layout (paths in the manifest are relative to its folder)::

    out_dir/manifest.csv                          patient_id, site, label, us2d, cdfi, elasto
    out_dir/images/<site>/<patient_id>/<k>_us2d.png     8-bit grey
    out_dir/images/<site>/<patient_id>/<k>_cdfi.png     8-bit RGB
    out_dir/images/<site>/<patient_id>/<k>_elasto.png   8-bit RGB

One manifest row per image triplet (``images_per_patient`` per patient), no ``split`` column.
Patient ids are opaque (``"B-0193"``), unique across sites. The same ``seed`` gives
byte-identical files.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
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

__all__ = [
    "CLASSES",
    "DEFAULT_CLASS_MIX",
    "DEFAULT_PATIENTS_PER_SITE",
    "MANIFEST_COLUMNS",
    "MODALITIES",
    "generate_lymph_node",
]

log = logging.getLogger(__name__)

CLASSES: tuple[str, ...] = ("metastatic", "lymphoma", "benign")
"""Class names, in the ``lymph-node`` task's order."""

MODALITIES: tuple[str, ...] = ("us2d", "cdfi", "elasto")
"""Modality columns, in the ``lymph-node`` task's order."""

MANIFEST_COLUMNS: tuple[str, ...] = ("patient_id", "site", "label", *MODALITIES)
"""Columns of the written ``manifest.csv``, in order."""

DEFAULT_PATIENTS_PER_SITE: tuple[tuple[str, int], ...] = (
    ("hospital-a", 220),
    ("hospital-b", 200),
    ("hospital-c", 166),
)
"""Patients per site when none are given (586 in all, as in the seed study)."""

DEFAULT_CLASS_MIX: tuple[tuple[float, float, float], ...] = (
    (0.45, 0.20, 0.35),  # head-and-neck oncology centre: many metastases
    (0.25, 0.15, 0.60),  # general hospital: mostly benign (reactive) nodes
    (0.30, 0.40, 0.30),  # haematology referral centre: many lymphomas
)
"""Class shares (metastatic, lymphoma, benign) of site 1, 2, 3, ... (cycled) when a site has
no entry in ``class_mix``."""

_MEANS: dict[str, dict[str, tuple[float, float, float]]] = {
    "us2d": {
        "roundness": (0.70, 0.75, 0.25),
        "hilum": (0.20, 0.35, 0.85),
        "echo": (0.55, 0.20, 0.45),
        "heterogeneity": (0.75, 0.40, 0.20),
    },
    "cdfi": {"central": (0.15, 0.65, 0.50), "peripheral": (0.70, 0.55, 0.10)},
    "elasto": {"stiffness": (0.80, 0.45, 0.20), "patchiness": (0.70, 0.35, 0.20)},
}
_MIN_PER_CLASS = 2
_SPECKLE_LOOKS = 3


@dataclass(frozen=True)
class _Scanner:
    """Display settings of one site's scanner (reference = all neutral)."""

    gain: float = 1.0
    gamma: float = 1.0
    grain: float = 1.0  # speckle correlation length, relative to the reference
    blur: float = 0.0  # point-spread blur sigma in pixels per 64 px of image side
    colour: tuple[float, float, float] = (1.0, 1.0, 1.0)  # overlay channel gains


_SCANNER_PROFILES: tuple[_Scanner, ...] = (
    _Scanner(gain=1.2, gamma=0.75, grain=1.7, blur=0.8, colour=(0.85, 1.0, 1.15)),
    _Scanner(gain=0.8, gamma=1.3, grain=0.7, blur=0.4, colour=(1.15, 0.9, 0.9)),
    _Scanner(gain=1.1, gamma=1.2, grain=1.4, blur=0.0, colour=(1.0, 1.15, 0.85)),
)


@dataclass(frozen=True)
class _Patient:
    """Per-patient draws shared by all of a patient's image triplets."""

    label: int
    look: dict[str, float]  # appearance parameter -> value in [0, 1]
    centre: tuple[float, float]
    long_axis: float
    angle: float


def generate_lymph_node(
    out_dir: str | Path,
    *,
    patients_per_site: Mapping[str, int] | Iterable[tuple[str, int]] = DEFAULT_PATIENTS_PER_SITE,
    class_mix: Mapping[str, Sequence[float]] | None = None,
    images_per_patient: tuple[int, int] = (1, 2),
    image_size: int = 64,
    modality_signal: float = 1.0,
    noise_sd: float = 0.25,
    scanner_shift: float = 1.0,
    seed: int = 0,
) -> Path:
    """Write a synthetic three-modality lymph-node data set; return the manifest path.

    Args:
        out_dir: folder to write into (created if needed); files of the same names are
            overwritten.
        patients_per_site: site name -> patients, as a mapping or ``(name, n)`` pairs.
            Default: hospital-a 220, hospital-b 200, hospital-c 166 (586, as in the study).
        class_mix: site name -> shares of (metastatic, lymphoma, benign), each >= 0, summing
            to 1. Sites not named get :data:`DEFAULT_CLASS_MIX` in site order. Default None.
        images_per_patient: ``(min, max)`` image triplets per patient, drawn uniformly.
            Default (1, 2).
        image_size: side of the square images in pixels (>= 16). Default 64.
        modality_signal: scale of the class differences; 0 gives class-free images (a null
            control), 1 the documented difficulty, larger is easier. Default 1.0.
        noise_sd: per-patient noise of each appearance parameter. Default 0.25.
        scanner_shift: scale of the non-reference sites' scanner differences; 0 = identical
            scanners. Default 1.0.
        seed: random seed (>= 0). Default 0.

    Returns:
        Path of ``out_dir/manifest.csv``.

    Raises:
        ValueError: listing every bad argument at once.
    """
    sites = _validate(
        patients_per_site=patients_per_site,
        class_mix=class_mix,
        images_per_patient=images_per_patient,
        image_size=image_size,
        modality_signal=modality_signal,
        noise_sd=noise_sd,
        scanner_shift=scanner_shift,
        seed=seed,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mixes = _site_mixes(sites, class_mix or {})
    rows: list[dict[str, str]] = []
    for index, (site, n) in enumerate(sites):
        site_rows = _write_site(
            out,
            site=site,
            site_index=index,
            n_patients=n,
            mix=mixes[site],
            images_per_patient=(int(images_per_patient[0]), int(images_per_patient[1])),
            image_size=int(image_size),
            modality_signal=float(modality_signal),
            noise_sd=float(noise_sd),
            scanner=_site_scanner(index, float(scanner_shift)),
            seed=int(seed),
        )
        rows.extend(site_rows)
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(MANIFEST_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    log.info(
        "wrote %d image triplets of %d patients to %s", len(rows), sum(n for _, n in sites), out
    )
    return manifest


# --------------------------------------------------------------------------- validation


def _validate(
    *,
    patients_per_site: Mapping[str, int] | Iterable[tuple[str, int]],
    class_mix: Mapping[str, Sequence[float]] | None,
    images_per_patient: tuple[int, int],
    image_size: int,
    modality_signal: float,
    noise_sd: float,
    scanner_shift: float,
    seed: int,
) -> list[tuple[str, int]]:
    """Check every argument, collect all problems and raise one ValueError; return the sites."""
    problems: list[str] = []
    sites = parse_sites(
        patients_per_site,
        min_per_class=_MIN_PER_CLASS,
        n_classes=len(CLASSES),
        problems=problems,
    )
    names = {name for name, _ in sites}
    for name, shares in dict(class_mix or {}).items():
        if name not in names:
            problems.append(
                f"class_mix names site {name!r}, which is not in patients_per_site "
                f"({', '.join(sorted(names)) or 'none'})"
            )
            continue
        values = list(shares) if isinstance(shares, Sequence) else []
        if (
            len(values) != len(CLASSES)
            or not all(is_real(v) and v >= 0 for v in values)
            or abs(sum(values) - 1.0) > 1e-6
        ):
            problems.append(
                f"class_mix[{name!r}] must be {len(CLASSES)} shares >= 0 of "
                f"({', '.join(CLASSES)}) summing to 1, got {shares!r}"
            )
    check_images_per_patient(images_per_patient, problems)
    check_image_size(image_size, problems)
    for key, value in (
        ("modality_signal", modality_signal),
        ("noise_sd", noise_sd),
        ("scanner_shift", scanner_shift),
    ):
        if not is_real(value) or value < 0:
            problems.append(f"{key} must be a finite number >= 0, got {value!r}")
    check_seed(seed, problems)
    if problems:
        raise ValueError("invalid synthetic lymph-node settings:\n- " + "\n- ".join(problems))
    if modality_signal == 0:
        log.warning(
            "modality_signal=0: the images carry no class information; use this only as a "
            "null control (any accuracy above the class-mix baseline means leakage)"
        )
    return sites


# --------------------------------------------------------------------------- cohort


def _site_mixes(
    sites: list[tuple[str, int]], class_mix: Mapping[str, Sequence[float]]
) -> dict[str, tuple[float, ...]]:
    return {
        name: tuple(float(v) for v in class_mix.get(name, DEFAULT_CLASS_MIX[i % 3]))
        for i, (name, _) in enumerate(sites)
    }


def _site_labels(n: int, mix: tuple[float, ...], rng: np.random.Generator, site: str) -> np.ndarray:
    """Shuffled class indices: largest-remainder counts of ``n * mix``, >= 2 per class present."""
    raw = np.asarray(mix) * n
    counts = np.floor(raw).astype(np.int64)
    for k in np.argsort(-(raw - counts), kind="stable")[: n - int(counts.sum())]:
        counts[k] += 1
    for k in range(len(counts)):
        if mix[k] > 0 and counts[k] < _MIN_PER_CLASS:
            need = _MIN_PER_CLASS - counts[k]
            counts[int(np.argmax(counts))] -= need
            counts[k] += need
            log.warning(
                "site %s: class %s raised to %d patients so that it can be split",
                site,
                CLASSES[k],
                _MIN_PER_CLASS,
            )
    return rng.permutation(np.repeat(np.arange(len(CLASSES)), counts))


def _site_scanner(site_index: int, shift: float) -> _Scanner:
    if site_index == 0:
        return _Scanner()
    p = _SCANNER_PROFILES[(site_index - 1) % len(_SCANNER_PROFILES)]
    return _Scanner(
        gain=p.gain**shift,
        gamma=p.gamma**shift,
        grain=p.grain**shift,
        blur=p.blur * shift,
        colour=tuple(c**shift for c in p.colour),  # type: ignore[arg-type]
    )


def _patient_ids(site_index: int, n: int, rng: np.random.Generator) -> list[str]:
    prefix = chr(ord("A") + site_index) if site_index < 26 else f"S{site_index + 1}"
    width = max(4, len(str(10 * n)))
    numbers = rng.choice(10**width, size=n, replace=False)
    return [f"{prefix}-{number:0{width}d}" for number in numbers]


def _draw_patient(
    label: int, modality_signal: float, noise_sd: float, rng: np.random.Generator
) -> _Patient:
    look = {}
    for table in _MEANS.values():
        for name, means in table.items():
            centre = float(np.mean(means))
            value = centre + modality_signal * (means[label] - centre) + rng.normal(0, noise_sd)
            look[name] = float(np.clip(value, 0.0, 1.0))
    return _Patient(
        label=label,
        look=look,
        centre=(float(rng.uniform(-0.12, 0.12)), float(rng.uniform(-0.1, 0.1))),
        long_axis=float(rng.uniform(0.5, 0.65)),
        angle=float(rng.uniform(-0.35, 0.35)),
    )


def _write_site(
    out: Path,
    *,
    site: str,
    site_index: int,
    n_patients: int,
    mix: tuple[float, ...],
    images_per_patient: tuple[int, int],
    image_size: int,
    modality_signal: float,
    noise_sd: float,
    scanner: _Scanner,
    seed: int,
) -> list[dict[str, str]]:
    rng = np.random.default_rng([seed, site_index, 0])
    labels = _site_labels(n_patients, mix, rng, site)
    ids = _patient_ids(site_index, n_patients, rng)
    grid = _grid(image_size)
    lo, hi = images_per_patient
    rows = []
    for patient_index, (patient_id, label) in enumerate(zip(ids, labels, strict=True)):
        # one stream per patient: a patient's images do not depend on who came first
        prng = np.random.default_rng([seed, site_index, patient_index, 1])
        patient = _draw_patient(int(label), modality_signal, noise_sd, prng)
        folder = out / "images" / site / patient_id
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(int(prng.integers(lo, hi + 1))):
            row = {"patient_id": patient_id, "site": site, "label": CLASSES[int(label)]}
            for modality, image in zip(
                MODALITIES, _render_triplet(patient, grid, scanner, prng), strict=True
            ):
                relative = Path("images", site, patient_id, f"{k}_{modality}.png")
                Image.fromarray(image).save(out / relative, format="PNG")
                row[modality] = relative.as_posix()
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class _Grid:
    x: np.ndarray  # (H, W) pixel centres in [-1, 1]
    y: np.ndarray
    size: int

    @property
    def scale(self) -> float:
        """Pixel lengths here are given for a 64 px image; multiply by this."""
        return self.size / 64.0


def _grid(size: int) -> _Grid:
    axis = (np.arange(size, dtype=np.float64) + 0.5) / size * 2.0 - 1.0
    y, x = np.meshgrid(axis, axis, indexing="ij")
    return _Grid(x=x, y=y, size=size)


def _soft(signed: np.ndarray, width: float) -> np.ndarray:
    """Smooth step: 1 where ``signed > 0``, 0 below, over about ``width``."""
    return 0.5 * (1.0 + np.tanh(signed / width))


def _field(size: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """``(H, W)`` Gaussian random field, correlation length ``sigma`` px, zero mean, unit sd."""
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-12)


def _speckle(size: int, grain: float, rng: np.random.Generator) -> np.ndarray:
    """Mean of a few Rayleigh speckle fields with correlation length ``grain`` px (mean 1)."""
    parts = rng.standard_normal((_SPECKLE_LOOKS, 2, size, size))
    parts = ndimage.gaussian_filter(parts, (0.0, 0.0, grain, grain), mode="wrap")
    magnitude = np.hypot(parts[:, 0], parts[:, 1])
    magnitude /= magnitude.mean(axis=(1, 2), keepdims=True)
    return magnitude.mean(axis=0)


@dataclass(frozen=True)
class _Node:
    """Node coordinates of one imaging plane: ``u, v`` scaled by the semi-axes (1 = capsule)."""

    u: np.ndarray
    v: np.ndarray
    inside: np.ndarray  # soft mask of the node, (H, W)

    @property
    def rho(self) -> np.ndarray:
        return np.hypot(self.u, self.v)


def _node(patient: _Patient, grid: _Grid, rng: np.random.Generator) -> _Node:
    shift = rng.normal(0.0, 0.03, 2)
    zoom = rng.uniform(0.95, 1.05)
    angle = patient.angle + rng.normal(0.0, 0.05)
    x = (grid.x - patient.centre[0] - shift[0]) / zoom
    y = (grid.y - patient.centre[1] - shift[1]) / zoom
    c, s = math.cos(angle), math.sin(angle)
    along, across = c * x + s * y, -s * x + c * y
    a = patient.long_axis
    b = a * (0.45 + 0.5 * patient.look["roundness"])
    u, v = along / a, across / b
    edge = 2.4 / grid.size / b
    return _Node(u=u, v=v, inside=_soft(1.0 - np.hypot(u, v), edge))


def _grey_base(node: _Node, grid: _Grid, scanner: _Scanner, rng: np.random.Generator) -> np.ndarray:
    """A low-contrast, class-free grey B-mode background under the colour overlays."""
    n = grid.size
    tissue = 0.4 + 0.05 * _field(n, 5.0 * grid.scale, rng)
    echo = tissue + node.inside * (0.25 - tissue)
    image = echo * _speckle(n, 0.9 * grid.scale * scanner.grain, rng)
    return np.log1p(3.0 * image) / math.log1p(3.0) * 0.7


def _us2d(
    patient: _Patient, node: _Node, grid: _Grid, scanner: _Scanner, rng: np.random.Generator
) -> np.ndarray:
    """2D grey-scale: cortex echo and texture, fatty hilum, cystic foci; ``(H, W)`` ~[0, 1]."""
    n, look = grid.size, patient.look
    texture = _field(n, 2.0 * grid.scale, rng)
    cortex = (0.1 + 0.4 * look["echo"]) * np.clip(
        1.0 + (0.05 + 0.7 * look["heterogeneity"]) * texture, 0.05, None
    )
    foci = _soft(_field(n, 1.5 * grid.scale, rng) - (2.6 - 1.6 * look["heterogeneity"]), 0.3)
    cortex = cortex + foci * (0.03 - cortex)
    hilum = np.exp(-((node.v / 0.28) ** 2)) * _soft(0.75 - np.abs(node.u), 0.1)
    tissue = 0.45 + 0.06 * _field(n, 6.0 * grid.scale, rng)
    echo = tissue + node.inside * (cortex + 0.65 * look["hilum"] * hilum - tissue)
    image = echo * _speckle(n, 0.9 * grid.scale * scanner.grain, rng)
    return np.log1p(4.0 * image) / math.log1p(4.0)


def _cdfi(
    patient: _Patient, node: _Node, grid: _Grid, scanner: _Scanner, rng: np.random.Generator
) -> np.ndarray:
    """Colour Doppler: red/blue vessels over a grey base; ``(H, W, 3)`` in [0, 1]."""
    n, look = grid.size, patient.look
    central_band = np.exp(-((node.v / 0.35) ** 2)) * _soft(0.8 - np.abs(node.u), 0.1) * node.inside
    ring = _soft(node.rho - 0.7, 0.05) * _soft(1.08 - node.rho, 0.05)
    vessels_c = _soft(_field(n, 1.2 * grid.scale, rng) - (1.8 - 2.0 * look["central"]), 0.2)
    vessels_p = _soft(_field(n, 1.2 * grid.scale, rng) - (1.8 - 2.0 * look["peripheral"]), 0.2)
    flow = np.clip(central_band * vessels_c + ring * vessels_p, 0.0, 1.0)
    direction = _field(n, 4.0 * grid.scale, rng) > 0  # towards (red) or away (blue)
    colour = np.zeros((n, n, 3))
    colour[..., 0] = np.where(direction, 0.95, 0.1)
    colour[..., 1] = 0.15
    colour[..., 2] = np.where(direction, 0.1, 0.95)
    colour *= np.asarray(scanner.colour)[None, None, :]
    grey = _grey_base(node, grid, scanner, rng)[..., None]
    return grey * (1.0 - flow[..., None]) + colour * flow[..., None]


def _elasto(
    patient: _Patient, node: _Node, grid: _Grid, scanner: _Scanner, rng: np.random.Generator
) -> np.ndarray:
    """Strain elastography: stiffness colour map in a box over a grey base; ``(H, W, 3)``."""
    n, look = grid.size, patient.look
    background = 0.4 + 0.08 * _field(n, 5.0 * grid.scale, rng)
    lesion = look["stiffness"] + 0.3 * look["patchiness"] * _field(n, 2.5 * grid.scale, rng)
    stiffness = background + node.inside * (lesion - background)
    stiffness = np.clip(stiffness + 0.05 * _field(n, 1.0 * grid.scale, rng), 0.0, 1.0)
    # red (soft) -> green (medium) -> blue (hard)
    colour = np.stack(
        [
            np.clip(1.0 - 2.0 * stiffness, 0.0, 1.0),
            1.0 - np.abs(2.0 * stiffness - 1.0),
            np.clip(2.0 * stiffness - 1.0, 0.0, 1.0),
        ],
        axis=-1,
    )
    colour *= np.asarray(scanner.colour)[None, None, :]
    box = (_soft(0.9 - np.abs(grid.x), 0.02) * _soft(0.8 - np.abs(grid.y), 0.02))[..., None]
    grey = _grey_base(node, grid, scanner, rng)[..., None]
    return grey * (1.0 - 0.75 * box) + colour * 0.75 * box


def _render_triplet(
    patient: _Patient, grid: _Grid, scanner: _Scanner, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One imaging plane: 2D ``(H, W)``, CDFI and elastography ``(H, W, 3)``, all uint8."""
    node = _node(patient, grid, rng)
    return (
        _display(_us2d(patient, node, grid, scanner, rng), scanner, grid.scale),
        _display(_cdfi(patient, node, grid, scanner, rng), scanner, grid.scale),
        _display(_elasto(patient, node, grid, scanner, rng), scanner, grid.scale),
    )


def _display(image: np.ndarray, scanner: _Scanner, scale: float) -> np.ndarray:
    """Scanner blur (spatial axes only), display curve and gain; uint8 of the same shape."""
    if scanner.blur > 0:
        sigma = (scanner.blur * scale,) * 2 + (0.0,) * (image.ndim - 2)
        image = ndimage.gaussian_filter(image, sigma, mode="nearest")
    image = np.clip(image, 0.0, 1.0) ** scanner.gamma * scanner.gain
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
