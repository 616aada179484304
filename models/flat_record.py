"""Flat, scalar-only metric records for transports that refuse lists (Flower's legacy API).

Flower's legacy ``Metrics`` (``fit``/``evaluate`` replies of a ``NumPyClient``) hold only
``bool | bytes | float | int | str``; the server side raises ``TypeError`` on a list. A
:meth:`~models.metrics.ScoreSummary.to_record` record holds integer lists (histograms,
confusion counts), so it travels flattened: a list value ``v`` under ``key`` becomes one
scalar per element, ``key[0]``, ``key[1]``, ..., plus its length under ``key[]`` (so that an
empty list survives). :func:`unflatten_record` undoes it exactly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["FlatRecordError", "flatten_record", "unflatten_record"]

Scalar = bool | bytes | float | int | str

_ITEM = re.compile(r"^(?P<key>.+)\[(?P<index>\d*)\]$")


class FlatRecordError(ValueError):
    """A flat record is malformed (a list element or its length is missing)."""


def flatten_record(record: Mapping[str, object]) -> dict[str, Scalar]:
    """Scalar-only copy of ``record``: each list value becomes ``key[i]`` items and ``key[]``.

    Args:
        record: values that are scalars or flat lists of scalars; keys must not end in ``]``.

    Raises:
        FlatRecordError: on a key ending in ``]``, a nested list or an unsupported value type.
    """
    out: dict[str, Scalar] = {}
    for key, value in record.items():
        if key.endswith("]"):
            raise FlatRecordError(f"key {key!r} ends in ']', which flat records reserve")
        if isinstance(value, list | tuple):
            out[f"{key}[]"] = len(value)
            for index, item in enumerate(value):
                if not isinstance(item, bool | bytes | float | int | str):
                    raise FlatRecordError(
                        f"{key}[{index}]: expected a scalar, got {type(item).__name__}"
                    )
                out[f"{key}[{index}]"] = item
        elif isinstance(value, bool | bytes | float | int | str):
            out[key] = value
        else:
            raise FlatRecordError(
                f"{key}: expected a scalar or a list of scalars, got {type(value).__name__}"
            )
    return out


def unflatten_record(flat: Mapping[str, object]) -> dict[str, object]:
    """Rebuild the record :func:`flatten_record` flattened (lists in index order).

    Raises:
        FlatRecordError: naming every list whose length or elements are missing.
    """
    out: dict[str, object] = {}
    lengths: dict[str, int] = {}
    items: dict[str, dict[int, object]] = {}
    for key, value in flat.items():
        match = _ITEM.match(key)
        if match is None:
            out[key] = value
        elif match["index"] == "":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise FlatRecordError(f"{key}: expected a list length >= 0, got {value!r}")
            lengths[match["key"]] = value
        else:
            items.setdefault(match["key"], {})[int(match["index"])] = value
    problems = [f"{key}[]: missing (elements without a length)" for key in items.keys() - lengths]
    for key, length in lengths.items():
        found = items.get(key, {})
        if set(found) != set(range(length)):
            problems.append(
                f"{key}: expected elements [0..{length - 1}], got {len(found)} element(s)"
            )
            continue
        out[key] = [found[i] for i in range(length)]
    if problems:
        raise FlatRecordError("invalid flat record: " + "; ".join(sorted(problems)))
    return out
