"""Clinical feature columns: checking, and the preprocessing a site learns from its own rows.

A task's ``features`` are manifest columns holding numbers or category strings
(``TaskSpec.categories`` declares the levels of the categorical ones). Each site turns a row
into the float vector ``(F,)`` its model takes, with a :class:`FeatureTransform` fitted on
**its own training rows only**:

1. missing values (empty cell, or ``?``, ``NA``, ``n/a``, ``nan``, ``null``, ``none``, ``-``)
   are imputed: numbers with the training median, categories with the most frequent
   training level;
2. numbers are standardised with the training mean and standard deviation (after imputation);
3. a two-level category becomes one 0/1 input (1 = the second declared level), a larger one
   a one-hot block; levels match case-insensitively, surrounding spaces and tabs ignored.

The layout (which input is which) comes from the task alone
(:func:`models.clinical.clinical_input_names`), so every site feeds the global model the same
width; the *statistics* are the site's own and never leave it (they are not part of the model
weights). The same fitted transform is used for the site's train, val and test rows;
:meth:`FeatureTransform.save` / :meth:`FeatureTransform.load` keep it next to a local
checkpoint so that a later evaluation applies exactly the same transform.
"""

from __future__ import annotations

import json
import logging
import math
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from models.clinical import input_names_for
from models.tasks import TaskSpec

if TYPE_CHECKING:
    from client.manifest import Manifest

__all__ = [
    "MISSING_TOKENS",
    "FeatureTransform",
    "feature_problems",
    "parse_category",
    "parse_number",
    "site_feature_transform",
]

logger = logging.getLogger(__name__)

MISSING_TOKENS = frozenset({"", "?", "na", "n/a", "nan", "null", "none", "-"})
"""Cell values (after stripping, case-insensitive) that mean "missing"."""

_SHOWN_PER_COLUMN = 5  # bad cells listed per column before summarising the rest


def _is_missing(text: object) -> bool:
    return text is None or str(text).strip().lower() in MISSING_TOKENS


def parse_number(text: object) -> float:
    """A numeric cell as a float; ``nan`` when missing.

    Raises:
        ValueError: the cell is neither a number nor a missing-value token.
    """
    if _is_missing(text):
        return math.nan
    cleaned = str(text).strip()
    try:
        value = float(cleaned)
    except ValueError:
        raise ValueError(
            f"{cleaned!r} is not a number (leave the cell empty for a missing value)"
        ) from None
    if not math.isfinite(value):
        raise ValueError(f"{cleaned!r} is not a finite number")
    return value


def parse_category(text: object, levels: Iterable[str]) -> int | None:
    """The index of a categorical cell's level (case-insensitive); ``None`` when missing.

    Raises:
        ValueError: the cell is not one of ``levels`` and not a missing-value token.
    """
    if _is_missing(text):
        return None
    choices = [level.lower() for level in levels]
    cleaned = str(text).strip()
    try:
        return choices.index(cleaned.lower())
    except ValueError:
        raise ValueError(
            f"unknown level {cleaned!r}; use one of {', '.join(repr(c) for c in levels)} "
            "(or leave the cell empty for a missing value)"
        ) from None


def feature_problems(frame: pd.DataFrame, task: TaskSpec) -> list[tuple[int, str, str]]:
    """Every bad clinical cell of ``frame`` as ``(row, column, message)``.

    Columns missing from ``frame`` are skipped (the manifest check reports them). At most
    five cells per column are listed; the rest are counted in one more problem.

    Args:
        frame: manifest rows (index = spreadsheet row), cells as strings.
        task: gives the feature columns and the levels of the categorical ones.
    """
    problems: list[tuple[int, str, str]] = []
    for feature in task.features:
        if feature not in frame.columns:
            continue
        levels = task.categories.get(feature)
        bad: list[tuple[int, str]] = []
        for row, value in frame[feature].items():
            try:
                if levels is None:
                    parse_number(value)
                else:
                    parse_category(value, levels)
            except ValueError as err:
                bad.append((int(row), str(err)))  # type: ignore[call-overload]
        kind = "numeric" if levels is None else "categorical"
        for row, message in bad[:_SHOWN_PER_COLUMN]:
            problems.append((row, feature, f"{kind} feature: {message}"))
        if len(bad) > _SHOWN_PER_COLUMN:
            rows = [r for r, _ in bad[_SHOWN_PER_COLUMN:]]
            problems.append(
                (
                    rows[0],
                    feature,
                    f"{len(rows)} more bad {kind} cells in this column (rows {rows[0]}-{rows[-1]})",
                )
            )
    return problems


@dataclass(frozen=True)
class FeatureTransform:
    """Site-fitted preprocessing of clinical features (see the module docstring).

    Build with :meth:`fit`; apply with :meth:`transform`.

    Attributes:
        features: feature columns, in task order.
        categories: levels of the categorical features.
        numeric: numeric feature -> ``(fill, mean, std)``: imputed value (training median),
            and the standardisation of the imputed training column.
        fills: categorical feature -> index of the imputed level (the most frequent training
            level), or -1 when the training rows have none (the input is then all zeros).
        n_rows: training rows it was fitted on.
    """

    features: tuple[str, ...]
    categories: dict[str, tuple[str, ...]]
    numeric: dict[str, tuple[float, float, float]]
    fills: dict[str, int]
    n_rows: int

    @property
    def names(self) -> list[str]:
        """Names of the output columns (``models.clinical.clinical_input_names``)."""
        return input_names_for(self.features, self.categories)

    @property
    def width(self) -> int:
        """``F``, the number of output columns."""
        return len(self.names)

    @classmethod
    def fit(cls, frame: pd.DataFrame, task: TaskSpec) -> FeatureTransform:
        """Learn imputation and standardisation from ``frame`` (a site's training rows).

        Args:
            frame: training rows with one string column per task feature (already checked by
                :func:`feature_problems`).
            task: the task (features and categories).

        Raises:
            ValueError: a feature column is missing, or a cell cannot be parsed.
        """
        missing = [f for f in task.features if f not in frame.columns]
        if missing:
            raise ValueError(f"cannot fit the feature transform: columns {missing} are missing")
        numeric: dict[str, tuple[float, float, float]] = {}
        fills: dict[str, int] = {}
        for feature in task.features:
            levels = task.categories.get(feature)
            if levels is None:
                values = np.array([parse_number(v) for v in frame[feature]], dtype=np.float64)
                observed = values[~np.isnan(values)]
                if observed.size == 0:
                    logger.warning(
                        "feature %s has no value in the %d training rows; it is set to 0",
                        feature,
                        len(values),
                    )
                    numeric[feature] = (0.0, 0.0, 1.0)
                    continue
                fill = float(np.median(observed))
                imputed = np.where(np.isnan(values), fill, values)
                std = float(imputed.std())
                numeric[feature] = (fill, float(imputed.mean()), std if std > 1e-12 else 1.0)
            else:
                codes = [parse_category(v, levels) for v in frame[feature]]
                counts = np.bincount([c for c in codes if c is not None], minlength=len(levels))
                if counts.sum() == 0:
                    logger.warning(
                        "feature %s has no value in the %d training rows; its inputs are 0",
                        feature,
                        len(codes),
                    )
                    fills[feature] = -1
                else:
                    fills[feature] = int(np.argmax(counts))  # ties: the first level
        return cls(
            features=tuple(task.features),
            categories={k: tuple(v) for k, v in task.categories.items()},
            numeric=numeric,
            fills=fills,
            n_rows=len(frame),
        )

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Rows of ``frame`` as model inputs.

        Args:
            frame: rows with one string column per feature.

        Returns:
            float32 array ``(N, F)``, columns in :attr:`names` order.
        """
        columns: list[np.ndarray] = []
        n = len(frame)
        for feature in self.features:
            cells = frame[feature].tolist() if feature in frame.columns else None
            if cells is None:
                raise ValueError(f"cannot transform: feature column {feature!r} is missing")
            levels = self.categories.get(feature)
            if levels is None:
                fill, mean, std = self.numeric[feature]
                values = np.array([parse_number(v) for v in cells], dtype=np.float64)
                values = np.where(np.isnan(values), fill, values)
                columns.append(((values - mean) / std)[:, None])
                continue
            fill_code = self.fills[feature]
            codes = np.array(
                [c if (c := parse_category(v, levels)) is not None else fill_code for v in cells],
                dtype=np.int64,
            )
            onehot = np.zeros((n, len(levels)))
            known = codes >= 0
            onehot[np.flatnonzero(known), codes[known]] = 1.0
            columns.append(onehot[:, 1:2] if len(levels) == 2 else onehot)
        if not columns:
            return np.zeros((n, 0), dtype=np.float32)
        return np.concatenate(columns, axis=1).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (:meth:`from_dict` reads it back)."""
        return {
            "features": list(self.features),
            "categories": {k: list(v) for k, v in self.categories.items()},
            "numeric": {k: list(v) for k, v in self.numeric.items()},
            "fills": dict(self.fills),
            "n_rows": self.n_rows,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureTransform:
        """Rebuild from :meth:`to_dict` output."""
        try:
            return cls(
                features=tuple(data["features"]),
                categories={k: tuple(v) for k, v in data["categories"].items()},
                numeric={
                    k: (float(a), float(b), float(c)) for k, (a, b, c) in data["numeric"].items()
                },
                fills={k: int(v) for k, v in data["fills"].items()},
                n_rows=int(data["n_rows"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(
                "not a saved FeatureTransform: expected keys features, categories, numeric, "
                f"fills, n_rows ({err})"
            ) from err

    def save(self, path: str | Path) -> Path:
        """Write the transform as JSON (keep it with the site's local checkpoint)."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> FeatureTransform:
        """Read a transform written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))


_FITTED: weakref.WeakKeyDictionary[Manifest, FeatureTransform] = weakref.WeakKeyDictionary()


def site_feature_transform(manifest: Manifest) -> FeatureTransform:
    """The transform fitted on ``manifest``'s training rows (fitted once per manifest object).

    Every split of the site (train, val, test) is transformed with this one, so evaluation uses
    the statistics learned at training.

    Raises:
        ValueError: the manifest has no training rows to learn from.
    """
    fitted = _FITTED.get(manifest)
    if fitted is None:
        rows = manifest.rows("train")
        if rows.empty:
            raise ValueError(
                f"{manifest.path}: no training rows to learn the clinical feature preprocessing "
                "from (imputation and standardisation use the site's own training rows)"
            )
        fitted = FeatureTransform.fit(rows, manifest.task)
        _FITTED[manifest] = fitted
        logger.info(
            "clinical features: preprocessing fitted on %d training rows (%d inputs)",
            fitted.n_rows,
            fitted.width,
        )
    return fitted
