"""Synthetic kidney-tumour CT slices with masks and clinical records (stand-in for the DFS study).

The DFS study segments kidney tumours on 2D CT slices (RUSP-Net) and predicts a chronic kidney
disease (CKD) risk from the segmentation and 24 clinical features (GRU), with 4 workers.
:func:`generate_ct_clinical` writes a look-alike data set in the site data contract of
``DESIGN.md``: one ``manifest.csv`` with ``patient_id``, ``site``, ``label`` (``ckd`` /
``notckd``, or ``tumour`` / ``background`` with ``label="tumour"``), ``ct``, ``mask`` and the
24 UCI-CKD feature columns. Nothing here is patient data.

Signal model
------------
Each slice is MONAI's ``create_test_image_2d`` with one disc (the tumour) of radius ``r`` on a
smoothed-noise background; the mask is the disc (0 background, 1 tumour). A share
``empty_share`` of slices shows no tumour (empty mask). The risk depends on the tumour size::

    logit = size_effect * (r - r_mid) / r_half + e,   e ~ N(0, 1),   ckd if logit > 0

(no tumour counts as the smallest size). The clinical features are then drawn given the class
with means moved towards the class's typical UCI-CKD value by ``clinical_signal`` (0 = no
information, 1 = the UCI class means, which separate the classes almost perfectly), with
``missing_share`` of the cells left empty, so both the mask and the record carry the risk.

Sites and formats
-----------------
Site ``k`` gets a scanner profile: display gain and offset, and noise level grow with ``k`` x
``scanner_shift``. A share ``nifti_share`` of the rows is written as NIfTI (``.nii.gz`` for both
``ct`` and ``mask``, via nibabel), the rest as 8-bit PNG (mask 0 / 255)::

    out_dir/manifest.csv
    out_dir/images/<site>/<patient_id>_<k>_ct.png | .nii.gz
    out_dir/images/<site>/<patient_id>_<k>_mask.png | .nii.gz

The same ``seed`` gives the same values.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import nibabel
import numpy as np
from monai.data.synthetic import create_test_image_2d
from PIL import Image
from scipy import ndimage

from simulation._site_args import (
    check_image_size,
    check_images_per_patient,
    check_seed,
    is_real,
    parse_sites,
)

__all__ = ["CT_FEATURES", "generate_ct_clinical"]

log = logging.getLogger(__name__)

# (feature, notckd mean, ckd mean, sd within a class, decimals): typical UCI CKD values.
_NUMERIC = (
    ("age", 46.0, 54.0, 15.0, 0),
    ("bp", 71.0, 79.0, 12.0, 0),
    ("sg", 1.022, 1.014, 0.005, 3),
    ("al", 0.0, 1.7, 1.2, 0),
    ("su", 0.0, 0.8, 0.9, 0),
    ("bgr", 107.0, 175.0, 60.0, 0),
    ("bu", 33.0, 72.0, 40.0, 0),
    ("sc", 0.9, 4.4, 3.0, 1),
    ("sod", 141.0, 133.0, 8.0, 0),
    ("pot", 4.3, 4.9, 1.0, 1),
    ("hemo", 15.2, 10.6, 2.2, 1),
    ("pcv", 46.0, 32.0, 7.0, 0),
    ("wc", 7700.0, 9000.0, 2500.0, 0),
    ("rc", 5.4, 3.9, 0.8, 1),
)
# (feature, levels, P(second level | notckd), P(second level | ckd))
_CATEGORICAL = (
    ("rbc", ("normal", "abnormal"), 0.02, 0.25),
    ("pc", ("normal", "abnormal"), 0.02, 0.35),
    ("pcc", ("notpresent", "present"), 0.01, 0.15),
    ("ba", ("notpresent", "present"), 0.01, 0.10),
    ("htn", ("no", "yes"), 0.02, 0.60),
    ("dm", ("no", "yes"), 0.02, 0.55),
    ("cad", ("no", "yes"), 0.01, 0.15),
    ("appet", ("good", "poor"), 0.02, 0.35),
    ("pe", ("no", "yes"), 0.01, 0.30),
    ("ane", ("no", "yes"), 0.01, 0.25),
)
_ORDER = (
    "age", "bp", "sg", "al", "su", "rbc", "pc", "pcc", "ba", "bgr", "bu", "sc",
    "sod", "pot", "hemo", "pcv", "wc", "rc", "htn", "dm", "cad", "appet", "pe", "ane",
)  # fmt: skip
CT_FEATURES: tuple[str, ...] = _ORDER
"""The clinical columns written (the ``kidney-tumour-dfs`` task's features, UCI CKD order)."""

_DEFAULT_SITES = (("ct-a", 30), ("ct-b", 30), ("ct-c", 30), ("ct-d", 30))


def _check(
    *,
    image_size: int,
    images_per_patient: tuple[int, int],
    seed: int,
    options: Mapping[str, object],
    label: str,
    problems: list[str],
) -> None:
    check_image_size(image_size, problems)
    check_images_per_patient(images_per_patient, problems)
    check_seed(seed, problems)
    for name, value in options.items():
        low, high = (0.0, math.inf) if name in ("size_effect", "scanner_shift") else (0.0, 1.0)
        if not is_real(value) or not low <= float(value) <= high:
            problems.append(f"{name} must be a number in [{low}, {high}], got {value!r}")
    if label not in ("risk", "tumour"):
        problems.append(f"label must be 'risk' (ckd / notckd) or 'tumour', got {label!r}")


def _slice(
    rng: np.random.RandomState, size: int, radius: int, site: int, shift: float
) -> tuple[np.ndarray, np.ndarray]:
    """One CT-like slice in [0, 1] and its 0/1 mask (no tumour when radius is 0)."""
    background = ndimage.gaussian_filter(rng.rand(size, size), sigma=size / 16)
    background = 0.25 + 0.5 * (background - background.min()) / (np.ptp(background) + 1e-9)
    if radius > 0:
        disc, mask = create_test_image_2d(
            size, size, num_objs=1, rad_min=radius, rad_max=radius + 1, noise_max=0.0,
            num_seg_classes=1, random_state=rng,
        )  # fmt: skip
        mask = (mask > 0).astype(np.uint8)
        image = np.where(mask > 0, 0.55 + 0.35 * disc, background)
    else:
        mask = np.zeros((size, size), dtype=np.uint8)
        image = background
    gain, offset, noise = 1.0 - 0.08 * site * shift, 0.03 * site * shift, 0.04 + 0.02 * site * shift
    image = gain * image + offset + rng.normal(0.0, noise, image.shape)
    return np.clip(image, 0.0, 1.0).astype(np.float32), mask


def _features(rng: np.random.RandomState, ckd: bool, signal: float, missing: float) -> list[str]:
    values: dict[str, str] = {}
    for name, mean0, mean1, sd, decimals in _NUMERIC:
        centre = (mean0 + mean1) / 2
        mean = centre + signal * ((mean1 if ckd else mean0) - centre)
        value = max(rng.normal(mean, sd), 0.0)
        values[name] = f"{value:.{decimals}f}"
    for name, levels, p0, p1 in _CATEGORICAL:
        p = (p0 + p1) / 2 + signal * ((p1 if ckd else p0) - (p0 + p1) / 2)
        values[name] = levels[int(rng.rand() < p)]
    return ["" if rng.rand() < missing else values[name] for name in _ORDER]


def _write(path: Path, array: np.ndarray, *, mask: bool) -> None:
    if path.name.endswith(".nii.gz"):
        data = array.astype(np.uint8 if mask else np.float32)
        nibabel.save(nibabel.Nifti1Image(data, affine=np.eye(4)), str(path))
    else:
        pixels = (array * 255 if mask else np.round(array * 255)).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(path)


def generate_ct_clinical(
    out_dir: str | Path,
    *,
    seed: int = 0,
    patients_per_site: Mapping[str, int] | Iterable[tuple[str, int]] = _DEFAULT_SITES,
    images_per_patient: tuple[int, int] = (1, 1),
    image_size: int = 64,
    nifti_share: float = 0.3,
    empty_share: float = 0.1,
    size_effect: float = 2.0,
    clinical_signal: float = 0.4,
    missing_share: float = 0.03,
    scanner_shift: float = 1.0,
    label: str = "risk",
) -> Path:
    """Write synthetic CT slices, masks and clinical records for several sites.

    Args:
        out_dir: output folder (created).
        seed: seed of every draw. Default 0.
        patients_per_site: ``{site: patients}`` (>= 4 each). Default 4 sites of 30.
        images_per_patient: ``(min, max)`` slices per patient. Default (1, 1).
        image_size: slice side in pixels (>= 16). Default 64.
        nifti_share: share of rows written as NIfTI instead of PNG. Default 0.3.
        empty_share: share of patients whose slice shows no tumour. Default 0.1.
        size_effect: how strongly the tumour size drives the risk. Default 2.0.
        clinical_signal: how far the clinical means move towards the class means (0-1).
            Default 0.4.
        missing_share: share of empty clinical cells. Default 0.03.
        scanner_shift: strength of the per-site intensity/noise profile. Default 1.0.
        label: ``"risk"`` (``ckd`` / ``notckd``, task ``kidney-tumour-dfs``) or ``"tumour"``
            (``tumour`` / ``background``: does the slice show tumour, task
            ``kidney-tumour-seg``). Default "risk".

    Returns:
        The manifest path.

    Raises:
        ValueError: listing every bad argument.
    """
    problems: list[str] = []
    sites = parse_sites(patients_per_site, min_per_class=2, n_classes=2, problems=problems)
    options = {
        "nifti_share": nifti_share,
        "empty_share": empty_share,
        "size_effect": size_effect,
        "clinical_signal": clinical_signal,
        "missing_share": missing_share,
        "scanner_shift": scanner_shift,
    }
    _check(
        image_size=image_size,
        images_per_patient=tuple(images_per_patient),  # type: ignore[arg-type]
        seed=seed,
        options=options,
        label=label,
        problems=problems,
    )
    if problems:
        raise ValueError("generate_ct_clinical: " + "; ".join(problems))
    out = Path(out_dir)
    rng = np.random.RandomState(seed)
    r_min, r_max = max(2, image_size // 16), max(3, image_size // 5)
    r_mid, r_half = (r_min + r_max) / 2, (r_max - r_min) / 2
    rows: list[list[str]] = []
    counter = 0
    for k, (site, n_patients) in enumerate(sites):
        folder = out / "images" / site
        folder.mkdir(parents=True, exist_ok=True)
        for _ in range(n_patients):
            counter += 1
            patient = f"K-{counter:04d}"
            radius = 0 if rng.rand() < empty_share else int(rng.randint(r_min, r_max + 1))
            size = radius if radius else r_min - 1
            ckd = size_effect * (size - r_mid) / r_half + rng.normal() > 0
            features = _features(rng, bool(ckd), float(clinical_signal), float(missing_share))
            low, high = images_per_patient
            for j in range(int(rng.randint(low, high + 1))):
                image, mask = _slice(rng, image_size, radius, k, float(scanner_shift))
                suffix = ".nii.gz" if rng.rand() < nifti_share else ".png"
                ct_path = folder / f"{patient}_{j}_ct{suffix}"
                mask_path = folder / f"{patient}_{j}_mask{suffix}"
                _write(ct_path, image, mask=False)
                _write(mask_path, mask, mask=True)
                if label == "risk":
                    name = "ckd" if ckd else "notckd"
                else:
                    name = "tumour" if mask.any() else "background"
                rows.append(
                    [
                        patient,
                        site,
                        name,
                        ct_path.relative_to(out).as_posix(),
                        mask_path.relative_to(out).as_posix(),
                        *features,
                    ]
                )
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patient_id", "site", "label", "ct", "mask", *_ORDER])
        writer.writerows(rows)
    log.info("wrote %d CT rows for %d sites to %s", len(rows), len(sites), manifest)
    return manifest
