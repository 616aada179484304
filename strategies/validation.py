"""Screening of site updates before aggregation: bad updates are rejected with a reason.

A hospital's update can be broken (a bug, a half-written file, an exploding loss) or hostile
(a poisoned site). :func:`screen_updates` looks at every train reply of a round against the
global model the server sent and rejects, each with one line saying why:

- arrays with NaN or Inf values;
- unknown keys (not in the global model) or missing keys (unless the strategy lets sites keep
  some arrays local, as FedBN does);
- arrays of another shape or dtype than the global model's; ``float16`` arrays are accepted
  for a ``float32``/``float64`` model when ``allow_float16`` is on (a site that compresses its
  update) and are cast back to the model's dtype before aggregation;
- an implausible update norm: ``||update - global||`` above ``norm_factor`` times the median
  norm of the round's updates (only with at least ``min_sites_for_norm`` valid updates: with
  two, the median is their mean and a scaled update hides in it).

Each reply is first screened on its own for being well-formed (decodable numeric arrays,
metrics, ``num-examples``, the site's name): :mod:`strategies.screening`, configured by the
same :class:`UpdateChecks`.

The round goes on with the accepted updates; the strategy records the rejections in the round
history, the audit trail and the run store.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, Message

from models.array_codec import array_view
from strategies.streaming import array_from_numpy

__all__ = [
    "UpdateChecks",
    "Rejection",
    "screen_updates",
    "shown_key",
    "update_norm",
    "update_problems",
]

_HALF_OK = (np.dtype(np.float32), np.dtype(np.float64))
_PLAIN_KEY = re.compile(r"[A-Za-z0-9._/-]{1,200}")


@dataclass(frozen=True)
class UpdateChecks:
    """What :func:`screen_updates` checks.

    Args:
        norm_factor: reject an update whose norm exceeds this many times the round's median
            update norm; 0 turns the norm check off. Default 10.
        min_sites_for_norm: the norm check needs at least this many valid updates. Default 3.
        allow_float16: accept float16 arrays for a float32/float64 model. Default True.
        allow_missing_keys: a site may leave arrays out (FedBN keeps normalisation layers
            local); unknown keys are always rejected. Default False.
        differences: replies hold ``w_site - w_global`` (``update-dtype`` float16), not
            weights: the update norm is the reply's own norm. Default False.
        num_classes: an evaluate reply's score summary must have this many classes; None
            does not check. Default None.
        score_bins: ... and this many score bins; None does not check. Default None.
        max_site_examples: the largest ``num-examples`` a reply may report. Default 100000.
    """

    norm_factor: float = 10.0
    min_sites_for_norm: int = 3
    allow_float16: bool = True
    allow_missing_keys: bool = False
    differences: bool = False
    num_classes: int | None = None
    score_bins: int | None = None
    max_site_examples: int = 100_000

    def __post_init__(self) -> None:
        problems = []
        if not (self.norm_factor == 0 or self.norm_factor > 1):
            problems.append(f"norm_factor must be 0 (off) or > 1, got {self.norm_factor}")
        if self.min_sites_for_norm < 3:
            problems.append(f"min_sites_for_norm must be >= 3, got {self.min_sites_for_norm}")
        if self.num_classes is not None and self.num_classes < 2:
            problems.append(f"num_classes must be >= 2 or None, got {self.num_classes}")
        if self.score_bins is not None and self.score_bins < 1:
            problems.append(f"score_bins must be >= 1 or None, got {self.score_bins}")
        if self.max_site_examples < 1:
            problems.append(f"max_site_examples must be >= 1, got {self.max_site_examples}")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True)
class Rejection:
    """One rejected update."""

    node_id: int
    reason: str


def update_problems(
    global_arrays: Mapping[str, np.ndarray],
    reply: ArrayRecord,
    *,
    allow_float16: bool = True,
    allow_missing_keys: bool = False,
) -> list[str]:
    """Every structural or numerical problem of one reply's arrays (empty = fine).

    Args:
        global_arrays: the global model sent this round, as NumPy arrays.
        reply: the arrays a site sent back.
        allow_float16: accept float16 for float32/float64 arrays. Default True.
        allow_missing_keys: do not require every global key. Default False.
    """
    problems: list[str] = []
    unknown = [k for k in reply.keys() if k not in global_arrays]
    if unknown:
        problems.append(f"unknown keys {_names(unknown)}")
    missing = [k for k in global_arrays if k not in reply]
    if missing and not allow_missing_keys:
        problems.append(f"missing keys {_names(missing)}")
    if len(missing) == len(global_arrays):
        problems.append("no array of the global model")
    for key, array in reply.items():
        if key not in global_arrays:
            continue
        ref = global_arrays[key]
        new = array_view(array)
        if tuple(new.shape) != tuple(ref.shape):
            problems.append(f"{key}: shape {tuple(new.shape)}, expected {tuple(ref.shape)}")
            continue
        half_ok = allow_float16 and new.dtype == np.float16 and ref.dtype in _HALF_OK
        if new.dtype != ref.dtype and not half_ok:
            problems.append(f"{key}: dtype {new.dtype}, expected {ref.dtype}")
            continue
        if np.issubdtype(new.dtype, np.floating) and not np.isfinite(new).all():
            bad = int((~np.isfinite(new)).sum())
            problems.append(f"{key}: {bad} NaN/Inf value{'s' if bad > 1 else ''}")
    return problems


def screen_updates(
    global_arrays: Mapping[str, np.ndarray],
    replies: Iterable[Message],
    checks: UpdateChecks,
    norms: dict[int, float] | None = None,
) -> tuple[list[Message], list[Rejection]]:
    """Split a round's train replies into (accepted, rejected).

    Replies that carry an error are passed through untouched (the strategy records them as
    failures). An accepted reply's float16 arrays are cast to the global model's dtype.

    Args:
        global_arrays: the global model sent this round, as NumPy arrays.
        replies: the round's train replies.
        checks: what to check.
        norms: if given, filled with ``id(reply) -> update norm`` of the accepted replies
            (the audit reuses them instead of computing them again).
    """
    kept: list[Message] = []
    rejected: list[Rejection] = []
    norms = {} if norms is None else norms
    for msg in replies:
        if msg.has_error():
            kept.append(msg)
            continue
        node = int(msg.metadata.src_node_id)
        records = list(msg.content.array_records.items())
        if len(records) != 1:
            rejected.append(Rejection(node, f"{len(records)} array records, expected 1"))
            continue
        name, arrays = records[0]
        problems = update_problems(
            global_arrays,
            arrays,
            allow_float16=checks.allow_float16,
            allow_missing_keys=checks.allow_missing_keys,
        )
        if problems:
            rejected.append(Rejection(node, "; ".join(problems)))
            continue
        msg.content[name] = _cast_half(arrays, global_arrays)
        norms[id(msg)] = update_norm(
            None if checks.differences else global_arrays, msg.content[name]
        )
        kept.append(msg)
    valid = [m for m in kept if id(m) in norms]
    if checks.norm_factor > 0 and len(valid) >= checks.min_sites_for_norm:
        median = float(np.median([norms[id(m)] for m in valid]))
        limit = checks.norm_factor * median
        if median > 0:
            for msg in valid:
                norm = norms[id(msg)]
                if norm > limit:
                    kept.remove(msg)
                    del norms[id(msg)]
                    rejected.append(
                        Rejection(
                            int(msg.metadata.src_node_id),
                            f"update norm {norm:.4g} is more than {checks.norm_factor:g} x the "
                            f"round's median {median:.4g}",
                        )
                    )
    return kept, rejected


def _cast_half(arrays: ArrayRecord, global_arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    if not any(array_view(a).dtype == np.float16 for a in arrays.values()):
        return arrays
    out = ArrayRecord()
    for key, array in arrays.items():
        value = array_view(array)
        if value.dtype == np.float16:
            value = value.astype(global_arrays[key].dtype)
        out[key] = array_from_numpy(value)  # (ascontiguousarray would make 0-d arrays 1-d)
    return out


def update_norm(global_arrays: Mapping[str, np.ndarray] | None, arrays: ArrayRecord) -> float:
    """``||reply - global||`` over floating arrays (``||reply||`` when ``global_arrays`` is
    None: the reply is already a difference).

    Reads the message's bytes in place and works in the arrays' own precision (float32 for
    float32 models; each array's sum of squares is added up in float64): a relative error of
    about 1e-5, against a 10x-median screening threshold, for a fraction of the time and
    memory of float64 copies.

    Raises:
        ValueError: a floating array the global model lacks or of another shape.
    """
    total = 0.0
    for key, array in arrays.items():
        new = array_view(array)
        if not np.issubdtype(new.dtype, np.floating):
            continue
        diff = new.ravel()
        if global_arrays is not None:
            if key not in global_arrays:
                raise ValueError(f"reply array {key!r} is not in the global model")
            old = global_arrays[key]
            if old.shape != new.shape:
                raise ValueError(f"reply array {key!r} has shape {new.shape}, expected {old.shape}")
            diff = np.subtract(diff, old.ravel(), dtype=np.result_type(new, old))
        total += float(np.dot(diff, diff))
    return math.sqrt(total)


def shown_key(key: object) -> str:
    """An array key as a reason may show it: plain state-dict names are echoed, anything else
    a site could have put there (free text, control characters) is not."""
    return repr(key) if isinstance(key, str) and _PLAIN_KEY.fullmatch(key) else "<unnamed key>"


def _names(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(shown_key(k) for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")
