"""Simulated sites from the UCI Chronic Kidney Disease table (the DFS study's clinical data).

The UCI CKD data set (400 patients, 24 clinical features, ``classification`` ckd / notckd) comes
from ONE hospital. :func:`prepare_ckd_sites` splits its patients into simulated sites so the
clinical models can be trained federatedly on real clinical values: **the split is simulated**
(random, stratified by class, seeded), so the sites differ only by chance, not by population
or practice as real hospitals would.

The written manifest follows the site data contract (``DESIGN.md``): ``patient_id``
(``ckd-<id>``), ``site``, ``label`` (``ckd`` / ``notckd``) and the 24 feature columns with the
source's values, surrounding spaces and tabs removed; no image columns. Missing values stay
empty; the site's preprocessing (``client.features``) imputes them from its own training rows.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["CKD_FEATURES", "DEFAULT_CKD_SOURCE", "prepare_ckd_sites", "resolve_ckd_source"]

log = logging.getLogger(__name__)

CKD_FEATURES: tuple[str, ...] = (
    "age", "bp", "sg", "al", "su", "rbc", "pc", "pcc", "ba", "bgr", "bu", "sc",
    "sod", "pot", "hemo", "pcv", "wc", "rc", "htn", "dm", "cad", "appet", "pe", "ane",
)  # fmt: skip
"""The 24 feature columns of ``kidney_disease.csv`` (as in the ``ckd-risk`` task)."""

DEFAULT_CKD_SOURCE = "../shared/data/ckd/kidney_disease.csv"
"""Where the scenario looks for the table, relative to the working directory or the project."""

_ENV = "FEDFUSION_CKD_CSV"
_PROJECT_ROOT = Path(__file__).resolve().parents[1]


def resolve_ckd_source(source: str | os.PathLike[str] | None = None) -> Path:
    """The CKD CSV to read: ``source``, else ``$FEDFUSION_CKD_CSV``, else the default.

    A relative path is looked up from the working directory, then from the project folder.

    Raises:
        FileNotFoundError: naming every place looked at and how to provide the file.
    """
    text = str(source) if source not in (None, "") else os.environ.get(_ENV) or DEFAULT_CKD_SOURCE
    path = Path(text).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, _PROJECT_ROOT / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise FileNotFoundError(
        f"UCI CKD table not found (looked at {', '.join(str(c) for c in candidates)}); put "
        "kidney_disease.csv (UCI Chronic Kidney Disease, 400 rows) there, set "
        f"{_ENV}=/path/to/kidney_disease.csv, or set [data] source in the scenario"
    )


def prepare_ckd_sites(
    out_dir: str | Path,
    *,
    patients_per_site: Mapping[str, int] | Iterable[tuple[str, int]] = (
        ("clinic-a", 150),
        ("clinic-b", 130),
        ("clinic-c", 120),
    ),
    source: str | os.PathLike[str] | None = None,
    seed: int = 0,
) -> Path:
    """Split the UCI CKD table into simulated sites and write ``out_dir/manifest.csv``.

    Args:
        out_dir: folder to write into (created if needed).
        patients_per_site: site name -> patients, as a mapping or ``(name, n)`` pairs; the
            total may be less than the table's rows (a random subset is used), not more.
            Default clinic-a 150, clinic-b 130, clinic-c 120 (all 400).
        source: the CSV (see :func:`resolve_ckd_source`). Default None.
        seed: seed of the (stratified, random) assignment of patients to sites. Default 0.

    Returns:
        Path of the written manifest.

    Raises:
        FileNotFoundError: the CSV cannot be found.
        ValueError: bad site counts, or a table without the expected columns (all listed).
    """
    path = resolve_ckd_source(source)
    table = pd.read_csv(path, dtype=str, keep_default_na=False).map(str.strip)
    table.columns = [str(c).strip() for c in table.columns]
    problems = []
    missing = [c for c in ("id", "classification", *CKD_FEATURES) if c not in table.columns]
    if missing:
        problems.append(f"{path} lacks the UCI CKD columns {missing}")
    items = (
        list(patients_per_site.items())
        if isinstance(patients_per_site, Mapping)
        else [tuple(pair) for pair in patients_per_site]
    )
    sites = [(str(name), n) for name, n in items]
    bad = [f"{name}={n!r}" for name, n in sites if isinstance(n, bool) or not isinstance(n, int)]
    bad += [f"{name}={n}" for name, n in sites if isinstance(n, int) and n < 10]
    if not sites or bad:
        problems.append(
            "patients_per_site must give each site an integer >= 10 patients"
            + (f", got {', '.join(bad)}" if bad else ", got no site")
        )
    if len({name for name, _ in sites}) != len(sites):
        problems.append(f"site names must be distinct, got {[name for name, _ in sites]}")
    total = sum(n for _, n in sites if isinstance(n, int))
    if not missing and total > len(table):
        problems.append(f"patients_per_site asks for {total} patients; {path} has {len(table)}")
    if problems:
        raise ValueError("cannot prepare the CKD sites: " + "; ".join(problems))

    rng = np.random.default_rng(seed)
    labels = table["classification"].to_numpy()
    # Stratified assignment: patients shuffled within each class and sorted by class, a random
    # subset when fewer are asked for (order kept), then dealt along a sequence that spreads
    # every site evenly, so each site gets about the table's class mix.
    order = np.concatenate(
        [rng.permutation(np.flatnonzero(labels == c)) for c in sorted(set(labels))]
    )
    chosen = order[np.sort(rng.choice(len(order), size=total, replace=False))]
    site_of = np.full(len(table), -1)
    site_of[chosen] = _interleave([n for _, n in sites])
    manifest = pd.DataFrame(
        {
            "patient_id": "ckd-" + table["id"],
            "site": [sites[i][0] if i >= 0 else "" for i in site_of],
            "label": table["classification"],
        }
    )
    for feature in CKD_FEATURES:
        manifest[feature] = table[feature]
    manifest = manifest[site_of >= 0]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / "manifest.csv"
    manifest.to_csv(target, index=False)
    log.info(
        "CKD: %d patients from %s split into simulated sites %s",
        len(manifest),
        path,
        ", ".join(f"{name} {n}" for name, n in sites),
    )
    return target


def _interleave(counts: list[int]) -> np.ndarray:
    """Site index for each of ``sum(counts)`` slots, spreading every site evenly over them.

    Dealing class-sorted patients along this sequence gives each site the overall class mix
    (a proportional, systematic stratification).
    """
    total = sum(counts)
    keys = np.concatenate([(np.arange(n) + 0.5) / n for n in counts])
    sites = np.repeat(np.arange(len(counts)), counts)
    return sites[np.argsort(keys, kind="stable")][:total]
