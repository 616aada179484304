"""Each site reply screened on its own: one bad reply is one site's failure for one round.

:mod:`strategies.validation` judges a train update against the global model (keys, shapes,
NaN, norm). Before that, :class:`ReplyScreen` checks that a reply is well-formed at all, so
that nothing a site sends can stop the run or steer it:

- the site's name (the ``site`` ConfigRecord's ``site-id``) is a short plain name and stays
  bound to one node: the first reply of a node binds node id <-> name; a later reply of that
  node with another name, or a name bound to another node that is still in the round, is
  refused (a site restarted on a new node takes its name along once its old node is gone);
- the reply carries its MetricRecord ``metrics`` with ``num-examples``: a positive integer no
  larger than ``max_site_examples`` and, in train replies, no larger than the rows the node
  declared in its first train reply of the run (a site's rows do not grow within a run); an
  evaluate reply may say 0 (nothing to evaluate) when its summary counts nothing;
- train: one ArrayRecord ``arrays`` whose arrays decode (a readable ``.npy`` payload of the
  declared shape) and are numeric (bool, int, uint or float);
- evaluate: a :class:`~models.metrics.ScoreSummary` of exactly ``[num_classes, score_bins]``
  that counts ``num-examples`` samples.

Error replies are recorded by code only, plus the reason when it is one of the fixed
sentences of :data:`ERROR_SENTENCES` (:func:`error_reason`): a site's free text never reaches
the history, the audit trail or the run store. No reason echoes text a site chose, except
names that passed the site-name check.

The bindings and pinned row counts are part of a checkpoint (:meth:`ReplyScreen.state`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.common.constant import SType

from models.array_codec import array_view
from models.metrics import ScoreSummary
from models.refusals import ERROR_SENTENCES
from strategies.validation import UpdateChecks, shown_key

__all__ = [
    "ERROR_SENTENCES",
    "ReplyScreen",
    "array_problems",
    "count_problem",
    "error_reason",
    "harmonise_replies",
    "site_name_problem",
    "summary_problem",
]

_SITE_NAME = re.compile(r"[\w.'-](?:[\w .'-]{0,62}[\w.'-])?")  # letters (any script), digits
_NUMERIC_KINDS = "biuf"  # bool, int, uint, float
_MAX_REASON = 300
_METRICS = "metrics"
_ARRAYS = "arrays"
_EXAMPLES = "num-examples"


def _flower_sentences() -> frozenset[str]:
    """The fixed reasons of the error replies the SuperLink makes (unreachable node, ...)."""
    try:
        from flwr.server.superlink.linkstate import utils
    except ImportError:  # pragma: no cover - depends on the Flower version
        return frozenset()
    names = ("MESSAGE_UNAVAILABLE", "REPLY_MESSAGE_UNAVAILABLE", "NODE_UNAVAILABLE")
    found = (getattr(utils, f"{name}_ERROR_REASON", None) for name in names)
    return frozenset(s for s in found if isinstance(s, str))


_KNOWN_SENTENCES = ERROR_SENTENCES | _flower_sentences()


def error_reason(code: object, reason: object) -> str:
    """What is recorded of an error reply: ``error code N``, plus the reason when it is one of
    the fixed sentences (:data:`ERROR_SENTENCES`, or the SuperLink's own)."""
    number = code if isinstance(code, int) and not isinstance(code, bool) else -1
    if isinstance(reason, str) and reason in _KNOWN_SENTENCES:
        return f"error code {number}: {reason}"
    return f"error code {number}"


def site_name_problem(name: object) -> str | None:
    """Why ``name`` is not a site name (None = fine); never echoes the value."""
    if not isinstance(name, str):
        return f"the site name is not a string but a {type(name).__name__}"
    if _SITE_NAME.fullmatch(name) is None:
        return "the site name is not a plain name (1-64 letters, digits, spaces, . ' _ -)"
    return None


def count_problem(
    value: object, *, cap: int, pinned: int | None = None, allow_zero: bool = False
) -> str | None:
    """Why ``value`` is not a valid ``num-examples`` (None = fine).

    Args:
        value: the reported count: an int, or a float with an integer value.
        cap: the largest count a site may report (``max_site_examples``).
        pinned: the rows the node declared in its first train reply, if any.
        allow_zero: accept 0 (an evaluate reply of a site without rows to evaluate, whose
            summary must then count nothing). Default False.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        return f"{_EXAMPLES} must be a number, got a {type(value).__name__}"
    if not math.isfinite(value) or value != int(value):
        return f"{_EXAMPLES} must be a whole number, got {float(value)!r}"
    count = int(value)
    if count < 0 or (count == 0 and not allow_zero):
        return f"{_EXAMPLES} must be > 0, got {count}"
    if count > cap:
        return f"{_EXAMPLES} {count} is more than max-site-examples {cap}"
    if pinned is not None and count > pinned:
        return (
            f"{_EXAMPLES} {count} is more than the {pinned} rows this node declared in its "
            "first train reply"
        )
    return None


def array_problems(arrays: ArrayRecord) -> list[str]:
    """Every array that does not decode to a numeric NumPy array (empty = all fine)."""
    problems: list[str] = []
    for key, array in arrays.items():
        problem = _array_problem(array)
        if problem is not None:
            problems.append(f"{shown_key(key)}: {problem}")
    return problems


def _array_problem(array: Array) -> str | None:
    try:
        if array.stype != SType.NUMPY:
            return "not a NumPy array payload"
        value = array_view(array)
        declared = tuple(int(s) for s in array.shape)
    except Exception as err:  # noqa: BLE001 - any undecodable payload is the site's fault
        return f"unreadable array bytes ({type(err).__name__})"
    if value.dtype.kind not in _NUMERIC_KINDS:
        return f"non-numeric dtype (kind {value.dtype.kind!r})"
    if declared != tuple(value.shape):
        return f"declared shape {declared} but the bytes hold {tuple(value.shape)}"
    return None


def summary_problem(
    metrics: Mapping[str, Any],
    *,
    num_classes: int | None,
    score_bins: int | None,
    num_examples: int,
) -> tuple[ScoreSummary | None, str | None]:
    """``(summary, None)``, or ``(None, why)`` when the reply's score summary is malformed, of
    another shape than ``[num_classes, score_bins]`` (None = not checked) or counts other than
    ``num_examples`` samples."""
    try:
        summary = ScoreSummary.from_record(metrics)
    except ValueError as err:
        return None, _short(str(err))
    except Exception as err:  # noqa: BLE001 - whatever a malformed record raises
        return None, f"invalid ScoreSummary record ({type(err).__name__})"
    k, b = summary.num_classes, summary.n_bins
    want_k = k if num_classes is None else num_classes
    want_b = b if score_bins is None else score_bins
    if (k, b) != (want_k, want_b):
        return None, f"score summary shape [{k}, {b}], expected [{want_k}, {want_b}]"
    if summary.n != num_examples:
        return (
            None,
            f"the score summary counts {summary.n} samples, {_EXAMPLES} says {num_examples}",
        )
    return summary, None


class ReplyScreen:
    """Screens one reply at a time and keeps what it learnt of the nodes: node id <-> site
    name bindings and each node's row count from its first train reply."""

    def __init__(self) -> None:
        self.names: dict[int, str] = {}  # node id -> bound site name
        self.rows: dict[int, int] = {}  # node id -> rows declared in its first train reply
        # Nodes asked in the current round: a name moves to a new node only when the node it
        # is bound to is gone (a restarted SuperNode gets a new id), never from a live one.
        self.live_nodes: set[int] = set()

    def name(self, node: int, default: str = "") -> str:
        """The name bound to ``node``, else ``default``."""
        return self.names.get(node, default)

    def train(
        self, msg: Message, node: int, checks: UpdateChecks, *, weight_key: str = _EXAMPLES
    ) -> str | None:
        """Why this train reply is refused (None = well-formed; its arrays are still to be
        judged against the global model). The first well-formed train reply of a node pins
        its row count."""
        problems = self._common(msg, node)
        metrics = self._metrics(msg, problems, exactly_one=True)
        if metrics is not None:
            value = metrics.get(_EXAMPLES)
            problem = (
                f"no {_EXAMPLES} in the metric record"
                if value is None
                else count_problem(value, cap=checks.max_site_examples, pinned=self.rows.get(node))
            )
            if problem is not None:
                problems.append(problem)
            if weight_key != _EXAMPLES:
                problems.extend(_weight_problem(metrics.get(weight_key), weight_key))
        records = list(msg.content.array_records.items())
        if len(records) != 1 or records[0][0] != _ARRAYS:
            problems.append(f"{len(records)} array records, expected one named {_ARRAYS!r}")
        else:
            problems.extend(array_problems(records[0][1]))
        if problems:
            return "; ".join(problems)
        self.rows.setdefault(node, int(metrics[_EXAMPLES]))  # type: ignore[index,arg-type]
        return None

    def evaluate(
        self, msg: Message, node: int, checks: UpdateChecks
    ) -> tuple[ScoreSummary | None, str | None]:
        """``(summary, None)`` for a well-formed evaluate reply, else ``(None, why)``."""
        problems = self._common(msg, node)
        metrics = self._metrics(msg, problems, exactly_one=False)
        summary = None
        if metrics is not None:
            value = metrics.get(_EXAMPLES)
            problem = (
                f"no {_EXAMPLES} in the metric record"
                if value is None
                else count_problem(value, cap=checks.max_site_examples, allow_zero=True)
            )
            if problem is not None:
                problems.append(problem)
            else:
                summary, problem = summary_problem(
                    metrics,
                    num_classes=checks.num_classes,
                    score_bins=checks.score_bins,
                    num_examples=int(value),  # type: ignore[arg-type]
                )
                if problem is not None:
                    problems.append(problem)
        if problems:
            return None, "; ".join(problems)
        return summary, None

    def _common(self, msg: Message, node: int) -> list[str]:
        """The site-name check and binding, shared by both stages."""
        content = msg.content
        if "site" in content.config_records:
            name = content.config_records["site"].get("site-id", str(node))
        else:
            name = str(node)
        problem = site_name_problem(name)
        if problem is not None:
            return [f"node {node}: {problem}"]
        bound = self.names.get(node)
        if bound is not None and bound != name:
            return [f"node {node} reported site {name!r} but is bound to {bound!r}"]
        owner = next((n for n, s in self.names.items() if s == name and n != node), None)
        if owner is not None and owner in self.live_nodes:
            return [f"node {node} reported site {name!r}, which is bound to node {owner}"]
        if owner is not None:  # the site came back on a new node; its old node is gone
            del self.names[owner]
            self.rows.pop(owner, None)
        self.names[node] = str(name)
        return []

    @staticmethod
    def _metrics(msg: Message, problems: list[str], *, exactly_one: bool) -> MetricRecord | None:
        records = msg.content.metric_records
        if _METRICS not in records:
            problems.append(f"no metric record {_METRICS!r}")
            return None
        if exactly_one and len(records) != 1:
            problems.append(f"{len(records)} metric records, expected one")
            return None
        return records[_METRICS]

    def state(self) -> dict[str, dict[str, object]]:
        """JSON-ready bindings and pinned row counts (for a checkpoint)."""
        return {
            "site-names": {str(k): v for k, v in self.names.items()},
            "site-rows": {str(k): v for k, v in self.rows.items()},
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state` (a resumed run keeps its bindings and pins)."""
        self.names.update({int(k): str(v) for k, v in (state.get("site-names") or {}).items()})
        self.rows.update({int(k): int(v) for k, v in (state.get("site-rows") or {}).items()})


def harmonise_replies(replies: Iterable[Message]) -> list[Message]:
    """The accepted train replies reduced to what every one of them carries, so that Flower's
    aggregation (which requires the same keys everywhere) cannot fail on one site's extras:
    the metric keys with a number in every reply and the array keys every reply sends (FedBN
    sites may leave arrays out). Records that already agree are left as they are."""
    replies = list(replies)
    updates = [m for m in replies if not m.has_error()]  # error replies pass through
    if len(updates) < 2:
        return replies
    metric_sets = [
        {k for k, v in m.content[_METRICS].items() if isinstance(v, int | float)} for m in updates
    ]
    array_sets = [set(m.content[_ARRAYS].keys()) for m in updates]
    metric_keys = set.intersection(*metric_sets)
    array_keys = set.intersection(*array_sets)
    for msg, metric_set, array_set in zip(updates, metric_sets, array_sets, strict=True):
        metrics = msg.content[_METRICS]
        if metric_set != metric_keys or len(metrics) != len(metric_keys):
            msg.content[_METRICS] = MetricRecord({k: metrics[k] for k in metric_keys})
        if array_set != array_keys:
            arrays = msg.content[_ARRAYS]
            msg.content[_ARRAYS] = ArrayRecord({k: arrays[k] for k in arrays if k in array_keys})
    return replies


def _weight_problem(value: object, key: str) -> list[str]:
    """A weight key other than ``num-examples`` is a uniform weight (central DP's
    ``unit-weight``): every site's must be 1, or one site could outweigh the others."""
    if value is None:
        return [f"no {key} in the metric record"]
    if isinstance(value, bool) or not isinstance(value, int | float) or value != 1:
        return [f"{key} must be 1"]
    return []


def _short(text: str) -> str:
    return text[:_MAX_REASON] + ("..." if len(text) > _MAX_REASON else "")
