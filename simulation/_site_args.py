"""Argument checks shared by the synthetic data generators (:mod:`simulation.synthetic`,
:mod:`simulation.synthetic_lymph`).

Each check appends human-readable problems to a list so that a generator can report every bad
argument in one ``ValueError``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

import numpy as np

__all__ = [
    "MIN_IMAGE_SIZE",
    "SITE_NAME",
    "check_image_size",
    "check_images_per_patient",
    "check_seed",
    "is_int",
    "is_real",
    "parse_sites",
]

MIN_IMAGE_SIZE = 16
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    return (
        isinstance(value, int | float | np.integer | np.floating)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def parse_sites(
    patients_per_site: Mapping[str, int] | Iterable[tuple[str, int]],
    *,
    min_per_class: int,
    n_classes: int,
    problems: list[str],
) -> list[tuple[str, int]]:
    """Return the valid ``(site, n)`` pairs; append a problem for each bad entry.

    ``patients_per_site`` is a mapping or ``(site, n)`` pairs; site names must match
    :data:`SITE_NAME` and be unique, and each ``n`` an integer >= ``min_per_class * n_classes``.
    """
    sites: list[tuple[str, int]] = []
    try:
        items = (
            list(patients_per_site.items())
            if isinstance(patients_per_site, Mapping)
            else [tuple(pair) for pair in patients_per_site]
        )
    except TypeError:
        items = None
    if items is None or any(len(pair) != 2 for pair in items):
        problems.append(
            f"patients_per_site must be a mapping or (site, n) pairs, got {patients_per_site!r}"
        )
    elif not items:
        problems.append("patients_per_site must name at least one site, got none")
    else:
        seen: set[str] = set()
        minimum = min_per_class * n_classes
        for name, n in items:
            if not isinstance(name, str) or not SITE_NAME.match(name):
                problems.append(
                    "site names must be non-empty and use only letters, digits, '.', '_' "
                    f"and '-' (they become folder names), got {name!r}"
                )
            elif name in seen:
                problems.append(f"site {name!r} is given twice in patients_per_site")
            else:
                seen.add(name)
            if not is_int(n) or n < minimum:
                problems.append(
                    f"patients_per_site[{name!r}] must be an integer >= {minimum} "
                    f"(at least {min_per_class} patients per class), got {n!r}"
                )
            else:
                sites.append((name, int(n)))
    return sites


def check_images_per_patient(images_per_patient: tuple[int, int], problems: list[str]) -> None:
    """Append a problem unless ``images_per_patient`` is ``(min, max)`` with 1 <= min <= max."""
    if (
        not isinstance(images_per_patient, tuple | list)
        or len(images_per_patient) != 2
        or not all(is_int(v) for v in images_per_patient)
        or not 1 <= images_per_patient[0] <= images_per_patient[1]
    ):
        problems.append(
            "images_per_patient must be (min, max) integers with 1 <= min <= max, got "
            f"{images_per_patient!r}"
        )


def check_image_size(image_size: int, problems: list[str]) -> None:
    """Append a problem unless ``image_size`` is an integer >= :data:`MIN_IMAGE_SIZE`."""
    if not is_int(image_size) or image_size < MIN_IMAGE_SIZE:
        problems.append(f"image_size must be an integer >= {MIN_IMAGE_SIZE}, got {image_size!r}")


def check_seed(seed: int, problems: list[str]) -> None:
    """Append a problem unless ``seed`` is an integer >= 0."""
    if not is_int(seed) or seed < 0:
        problems.append(f"seed must be an integer >= 0, got {seed!r}")
