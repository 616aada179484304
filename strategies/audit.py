"""The server's audit trail: per round, who was asked, who answered, and how big each update was.

One JSON object per training round, appended to ``audit.jsonl`` in the run's out-dir as soon
as the round's replies are in (so the trail survives a crash later in the run)::

    {"round": 1, "time": "2026-01-01T12:00:00Z",
     "asked": [node ids], "answered": ["center-a", ...], "missing": [node ids],
     "failed": [{"node-id": ..., "site": ..., "error-code": ..., "reason": ...}],
     "sites": {"center-a": {"node-id": ..., "num-examples": 120, "update-l2-norm": 0.83,
                            "dp": {"dp-epsilon-spent": 1.2, ...}, "skipped-files": 0}},
     "dp": {"dp-epsilon": 0.0, "central-dp-noise-multiplier": 0.0, ...},
     "central-dp": {"released": true, "epsilon-round": 0.9, "epsilon": 1.4, "delta": 1e-5,
                    "releases": 2, "accountant": "flwr[dp] RDP"}}

``central-dp`` is there only under central DP: whether this round's noisy aggregate was
released, the client-level epsilon of that one release and the cumulative epsilon of all
releases so far, from the server's accountant
(:class:`~strategies.central_dp.CentralDPAccountant`).

What it holds, and only that: node ids and site names, example counts, the L2 norm of each
site's update relative to the round's global model (floating-point arrays only), the ``dp-*``
scalars each site reported about its own privacy accounting, the number of unreadable image
files each site skipped (``skipped-files``), the DP settings of the run
config and the error code of a site that declined, with its reason only when that is one of
the fixed sentences of :data:`strategies.screening.ERROR_SENTENCES`. Never images, rows, labels or
patient identifiers; the norm is one number per site and round.

:class:`AuditTrail` is fed by :class:`~strategies.clinical.ClinicalMetricsMixin`:
``start_round`` from ``configure_train`` (the global arrays and the nodes asked) and
``record_train`` from ``aggregate_train`` (every reply, before aggregation). Behind Flower's
central-DP wrapper the norms are those of the clipped updates the sites sent.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message

from models.array_codec import array_view
from strategies.clinical import site_of
from strategies.history import json_safe
from strategies.screening import error_reason
from strategies.validation import update_norm

__all__ = [
    "AUDIT_FILE",
    "AuditTrail",
    "RoundAudit",
    "SiteUpdate",
    "dp_settings",
    "update_l2_norm",
]

_log = logging.getLogger(__name__)

#: File name of the trail in a run's out-dir.
AUDIT_FILE = "audit.jsonl"
#: Run-config keys that describe privacy settings (recorded in every round's ``dp``).
_DP_PREFIXES = ("dp-", "central-dp", "secagg")
_MAX_REASON = 300


def dp_settings(run_config: Mapping[str, object]) -> dict[str, object]:
    """The privacy settings of a run config: every ``dp-*``, ``central-dp*`` and ``secagg*`` key.

    Args:
        run_config: kebab-case run config, e.g. ``RunConfig.to_dict()``.
    """
    return {k: v for k, v in sorted(run_config.items()) if k.startswith(_DP_PREFIXES)}


def update_l2_norm(
    global_arrays: ArrayRecord | Mapping[str, np.ndarray],
    reply_arrays: ArrayRecord,
) -> float:
    """L2 norm of ``reply - global`` over the floating-point arrays the reply carries.

    Arrays the reply leaves out (e.g. FedBN's local normalisation layers) do not count;
    integer arrays (counters such as ``num_batches_tracked``) are skipped.

    Args:
        global_arrays: the global model sent in this round (an ArrayRecord, or its arrays
            already converted to NumPy).
        reply_arrays: the arrays one site sent back.

    Raises:
        ValueError: when the reply holds an array the global model lacks or of another shape.
    """
    reference = {
        key: value if isinstance(value, np.ndarray) else array_view(value)
        for key, value in global_arrays.items()
    }
    return update_norm(reference, reply_arrays)


@dataclass
class SiteUpdate:
    """One site's train reply as the audit sees it."""

    node_id: int
    site: str
    num_examples: int | None = None
    update_norm: float | None = None
    dp: dict[str, float] = field(default_factory=dict)
    skipped_files: int | None = None  # unreadable images the site skipped (its own count)
    error_code: int | None = None
    reason: str | None = None
    rejected: str | None = None  # why the server refused this update (strategies.validation)


@dataclass
class RoundAudit:
    """One training round of the trail."""

    round: int
    time: str
    asked: list[int]
    updates: list[SiteUpdate]
    dp: dict[str, object]
    central_dp: dict[str, object] | None = None

    @property
    def answered(self) -> list[str]:
        """Sites that sent weights."""
        return [u.site for u in self.updates if u.error_code is None]

    @property
    def used(self) -> list[str]:
        """Sites whose weights passed the server's checks."""
        return [u.site for u in self.updates if u.error_code is None and u.rejected is None]

    @property
    def missing(self) -> list[int]:
        """Nodes asked that sent nothing back (timeout, crash, disconnect)."""
        replied = {u.node_id for u in self.updates}
        return [n for n in self.asked if n not in replied]

    def to_json(self) -> dict[str, Any]:
        """The ``audit.jsonl`` line (JSON-ready; NaN/inf become null)."""
        sites = {
            u.site: {
                "node-id": u.node_id,
                "num-examples": u.num_examples,
                "update-l2-norm": u.update_norm,
                "dp": u.dp,
                "skipped-files": u.skipped_files,
            }
            for u in self.updates
            if u.error_code is None and u.rejected is None
        }
        rejected = [
            {"node-id": u.node_id, "site": u.site, "reason": u.rejected}
            for u in self.updates
            if u.rejected is not None
        ]
        failed = [
            {"node-id": u.node_id, "site": u.site, "error-code": u.error_code, "reason": u.reason}
            for u in self.updates
            if u.error_code is not None
        ]
        return json_safe(
            {
                "round": self.round,
                "time": self.time,
                "asked": self.asked,
                "answered": self.answered,
                "missing": self.missing,
                "failed": failed,
                "rejected": rejected,
                "used": self.used,
                "sites": sites,
                "dp": self.dp,
                **({} if self.central_dp is None else {"central-dp": self.central_dp}),
            }
        )


class AuditTrail:
    """Collects a :class:`RoundAudit` per training round; appends each to ``path``.

    Args:
        path: the JSONL file (truncated when the trail is created); None keeps the trail in
            memory only. Default None.
        settings: the run's privacy settings, recorded with every round (see
            :func:`dp_settings`). Default: none.
        keep_rounds: a resumed run keeps the lines of rounds up to this one already in
            ``path`` and appends after them. Default 0 (start a new file).
    """

    def __init__(
        self,
        *,
        path: str | Path | None = None,
        settings: Mapping[str, object] | None = None,
        keep_rounds: int = 0,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.settings = dict(settings or {})
        self.rounds: list[RoundAudit] = []
        self._round: int | None = None
        self._asked: list[int] = []
        self._global: ArrayRecord | None = None
        self._global_np: dict[str, np.ndarray] = {}
        self._site_names: dict[int, str] = {}  # node id -> site, from earlier replies
        self._central_dp: dict[str, object] | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            kept = []
            if keep_rounds > 0 and self.path.is_file():
                for line in self.path.read_text(encoding="utf-8").splitlines():
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError:  # a line cut short by the crash
                        continue
                    if int(entry.get("round", 0)) <= keep_rounds:
                        kept.append(line + "\n")
            self.path.write_text("".join(kept), encoding="utf-8")

    def start_round(self, server_round: int, *, arrays: ArrayRecord, asked: Iterable[int]) -> None:
        """Note the global model sent this round and the nodes asked to train."""
        self._round = server_round
        self._asked = [int(n) for n in asked]
        self._global = arrays
        self._global_np = {}

    def note_central_dp(self, accounting: Mapping[str, object] | None) -> None:
        """Central-DP accounting to record with the next :meth:`record_train`."""
        self._central_dp = None if accounting is None else dict(accounting)

    def record_train(
        self,
        server_round: int,
        replies: Iterable[Message],
        *,
        rejected: Mapping[int, tuple[str, str]] | None = None,
        senders: Mapping[str, int] | None = None,
        norms: Mapping[int, float] | None = None,
    ) -> RoundAudit:
        """Audit the train replies of ``server_round`` (call before aggregating them).

        Args:
            server_round: the round.
            replies: the replies the server received and accepted.
            rejected: node id -> (site, reason), for updates the server refused (they are not
                in ``replies``). Default: none.
            senders: message id -> node id of the messages sent this round, to attribute the
                error replies the SuperLink makes for unreachable nodes. Default: none.
            norms: ``id(reply) -> update norm`` already computed by the server's update
                checks (``strategies.validation``); others are computed here.
        """
        asked = self._asked if self._round == server_round else []
        updates = [self._site_update(msg, senders or {}, norms or {}) for msg in replies]
        for node_id, (site, reason) in (rejected or {}).items():
            self._site_names[int(node_id)] = site
            updates.append(
                SiteUpdate(
                    node_id=int(node_id),
                    site=site,
                    rejected=reason[:_MAX_REASON] + ("..." if len(reason) > _MAX_REASON else ""),
                )
            )
        entry = RoundAudit(
            round=server_round,
            time=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            asked=asked,
            updates=updates,
            dp=dict(self.settings),
            central_dp=self._central_dp,
        )
        self._central_dp = None
        self.rounds.append(entry)
        self._global_np = {}  # free the round's copy of the model
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry.to_json(), sort_keys=True) + "\n")
        _log.info(
            "audit round %d: asked %d, answered %s, failed %d, rejected %d, missing %d",
            server_round,
            len(asked),
            ", ".join(entry.answered) or "none",
            len(updates) - len(entry.answered),
            len(rejected or {}),
            len(entry.missing),
        )
        return entry

    def _site_update(
        self, msg: Message, senders: Mapping[str, int], norms: Mapping[int, float]
    ) -> SiteUpdate:
        node_id = senders.get(msg.metadata.reply_to_message_id, int(msg.metadata.src_node_id))
        if msg.has_error():  # the code, and a fixed sentence at most: never a site's free text
            code = msg.error.code
            return SiteUpdate(
                node_id=node_id,
                site=self._site_names.get(node_id, str(node_id)),
                error_code=code if isinstance(code, int) and not isinstance(code, bool) else -1,
                reason=error_reason(code, msg.error.reason),
            )
        update = SiteUpdate(node_id=node_id, site=site_of(msg))
        self._site_names[node_id] = update.site
        content = msg.content
        for record in content.metric_records.values():
            if "num-examples" in record:
                update.num_examples = _count(record["num-examples"])
            if "skipped-files" in record:
                update.skipped_files = _count(record["skipped-files"])
            for key, value in record.items():
                if key.startswith("dp-") and isinstance(value, int | float):
                    update.dp[key] = float(value)
        arrays = next(iter(content.array_records.values()), None)
        if id(msg) in norms:
            update.update_norm = norms[id(msg)]
        elif arrays is not None and self._global is not None:
            try:
                update.update_norm = update_l2_norm(self._global_numpy(), arrays)
            except ValueError as err:
                _log.warning("audit: no update norm for %s: %s", update.site, err)
        return update

    def _global_numpy(self) -> dict[str, np.ndarray]:
        if not self._global_np and self._global is not None:
            self._global_np = {k: array_view(v) for k, v in self._global.items()}
        return self._global_np


def _count(value: object) -> int | None:
    """A count a site reported, or None when it is not a finite whole number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if math.isfinite(value) and value == int(value) else None
