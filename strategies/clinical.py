"""Clinical metrics for any Flower strategy, built from what sites may share.

:class:`ClinicalMetricsMixin` goes before a Flower strategy class in the bases: weights are
aggregated by that strategy; evaluation replies carry each site's
:class:`~models.metrics.ScoreSummary` (per-class score histograms and confusion counts) and
global metrics are computed from their sum, never from per-patient scores.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord

from models.array_codec import array_view
from models.metrics import ScoreSummary, summary_metrics
from strategies.history import RoundRecord, RunHistory, SiteFailure
from strategies.screening import ReplyScreen, error_reason, harmonise_replies
from strategies.streaming import array_from_numpy
from strategies.validation import Rejection, UpdateChecks, screen_updates

if TYPE_CHECKING:
    from strategies.audit import AuditTrail

__all__ = ["ClinicalMetricsMixin", "site_of"]

_log = logging.getLogger(__name__)

RoundCallback = Callable[[RoundRecord], None]


def site_of(msg: Message) -> str:
    """The site name a reply carries (``site`` ConfigRecord), else the node id."""
    content = msg.content
    if "site" in content.config_records:
        return str(content.config_records["site"].get("site-id", msg.metadata.src_node_id))
    return str(msg.metadata.src_node_id)


class ClinicalMetricsMixin:
    """Per-site and global clinical metrics recorded in :attr:`history`; screened updates;
    k-of-n rounds.

    Every reply is screened on its own (:mod:`strategies.screening`: well-formed, a bound site
    name, a plausible ``num-examples``; evaluate replies a score summary of the run's shape)
    and every train update is judged against the global model (:mod:`strategies.validation`)
    before the Flower strategy aggregates it; refused replies, error replies (code and fixed
    sentence only) and nodes that did not answer within the round's timeout are recorded as
    failures of that round (history, audit, run store) and the round goes on with the rest,
    provided at least :attr:`min_answers` usable updates came back. With fewer, the global
    model stays as it was and the round carries a ``note``.

    Args:
        on_round_end: called with the finished :class:`RoundRecord` after each evaluation.
        **kwargs: passed to the Flower strategy that follows this mixin in the bases.
    """

    #: Set by the ServerApp to record who was asked/answered and each update's norm.
    audit: AuditTrail | None = None
    #: How replies are screened; None skips the checks against the global model (keys,
    #: shapes, NaN, norm), never the per-reply screening (which then uses the defaults).
    update_checks: UpdateChecks | None = UpdateChecks()
    #: The fewest usable updates that make a round; below it the global model is kept.
    min_answers: int = 1
    #: Names of NumPy-dict attributes holding server-side state (server-optimiser moments)
    #: that a checkpoint must keep for an exact resume.
    resume_attributes: tuple[str, ...] = ()
    #: Whether sites may leave arrays out of their update (FedBN).
    _sites_keep_arrays = False

    def __init__(self, *, on_round_end: RoundCallback | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.history = RunHistory()
        self.on_round_end = on_round_end
        self._round_started = time.perf_counter()
        self._sent: ArrayRecord | None = None
        self._asked: dict[str, list[Message]] = {"train": [], "evaluate": []}
        #: Per-reply screening; holds the node <-> site bindings and pinned row counts.
        self.screen = ReplyScreen()

    def configure_train(self, server_round, arrays, config, grid):  # type: ignore[no-untyped-def]
        self._round_started = time.perf_counter()
        self._sent = arrays
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._asked["train"] = messages
        self.screen.live_nodes = {int(m.metadata.dst_node_id) for m in messages}
        if self.audit is not None:
            self.audit.start_round(
                server_round, arrays=arrays, asked=[int(m.metadata.dst_node_id) for m in messages]
            )
        return messages

    def configure_evaluate(self, server_round, arrays, config, grid):  # type: ignore[no-untyped-def]
        messages = list(super().configure_evaluate(server_round, arrays, config, grid))
        self._asked["evaluate"] = messages
        self.screen.live_nodes = {int(m.metadata.dst_node_id) for m in messages}
        return messages

    def _senders(self, stage: str) -> dict[str, int]:
        """Message id -> the node it was sent to (ids are set when the grid pushes them)."""
        return {
            m.metadata.message_id: int(m.metadata.dst_node_id)
            for m in self._asked.get(stage, [])
            if m.metadata.message_id
        }

    @staticmethod
    def _node(msg: Message, senders: dict[str, int]) -> int:
        """The node a reply answers for: an error reply the SuperLink makes for an unreachable
        node comes from the SuperLink itself (node id 1), so look at what it replies to."""
        return senders.get(msg.metadata.reply_to_message_id, int(msg.metadata.src_node_id))

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies, rejected = self._screen_train(list(replies))
        norms: dict[int, float] = {}
        if self.update_checks is not None and self._sent is not None:
            checks = dataclasses.replace(
                self.update_checks,
                allow_missing_keys=self._sites_keep_arrays,
                # update-dtype float16 (strategies.streaming): replies are differences
                differences=getattr(self, "update_dtype", "float32") != "float32",
            )
            global_np = {k: array_view(v) for k, v in self._sent.items()}
            replies, judged = screen_updates(global_np, replies, checks, norms=norms)
            rejected += judged
        usable = self.record_train_replies(
            server_round, replies, rejected=rejected, norms=norms, screened=True
        )
        if usable < self.min_answers:
            record = self.history.round(server_round)
            record.note = (
                f"only {usable} usable update{'s' if usable != 1 else ''} "
                f"(min-answers {self.min_answers}): the global model was not changed"
            )
            _log.warning("round %d: %s", server_round, record.note)
            return None, None
        arrays, metrics = super().aggregate_train(server_round, harmonise_replies(replies))
        return self._keep_dtypes(arrays), metrics

    def _screen_train(self, replies: list[Message]) -> tuple[list[Message], list[Rejection]]:
        """Each train reply on its own (:mod:`strategies.screening`): error replies pass
        through (recorded as failures); malformed ones become rejections."""
        senders = self._senders("train")
        checks = self.update_checks or UpdateChecks()
        weight_key = str(getattr(self, "weighted_by_key", "num-examples"))
        kept: list[Message] = []
        rejected: list[Rejection] = []
        for msg in replies:
            node = self._node(msg, senders)
            reason = (
                None
                if msg.has_error()
                else self.screen.train(msg, node, checks, weight_key=weight_key)
            )
            if reason is None:
                kept.append(msg)
            else:
                rejected.append(Rejection(node, reason))
        return kept, rejected

    def record_train_replies(
        self,
        server_round: int,
        replies: list[Message],
        *,
        rejected: Iterable[Rejection] = (),
        norms: Mapping[int, float] | None = None,
        screened: bool = False,
    ) -> int:
        """Audit the round's train replies and note each site's scalars or failure (error
        reply, rejected update, no reply) in :attr:`history`; returns the number of usable
        updates. Called by :meth:`aggregate_train`, or by a wrapper that skips it (then the
        replies are screened here first: ``screened`` False)."""
        rejected = list(rejected)
        if not screened:
            replies, malformed = self._screen_train(list(replies))
            rejected += malformed
        senders = self._senders("train")
        if self.audit is not None:
            self.audit.record_train(
                server_round,
                replies,
                senders=senders,
                norms=norms,
                rejected={
                    r.node_id: (self.screen.name(r.node_id, str(r.node_id)), r.reason)
                    for r in rejected
                },
            )
        record = self.history.round(server_round)
        for rejection in rejected:
            self._fail(record, "train", rejection.node_id, f"update rejected: {rejection.reason}")
        usable = 0
        for msg in replies:
            node = self._node(msg, senders)
            if msg.has_error():
                self._fail(record, "train", node, error_reason(msg.error.code, msg.error.reason))
                continue
            usable += 1
            record.train[self.screen.name(node)] = dict(msg.content.metric_records["metrics"])
        self._record_missing(record, "train", replies, senders, rejected)
        return usable

    def _keep_dtypes(self, arrays: ArrayRecord | None) -> ArrayRecord | None:
        """The global model keeps the dtypes it was sent with (Flower's FedAdam/FedYogi
        return float64 arrays, which sites' float32 updates would then no longer match)."""
        if arrays is None or self._sent is None:
            return arrays
        for key, array in list(arrays.items()):
            if key in self._sent:
                want = array_view(self._sent[key]).dtype
                value = array_view(array)
                if value.dtype != want:
                    arrays[key] = array_from_numpy(value.astype(want))  # keeps 0-d shapes
        return arrays

    def strategy_state(self) -> dict[str, Any]:
        """What a checkpoint keeps of this strategy: its history, server-side state and the
        node <-> site bindings and pinned row counts of :attr:`screen`."""
        arrays = {}
        for name in self.resume_attributes:
            value = getattr(self, name, None)
            if value is not None:
                arrays[name] = {k: np.array(v, copy=True) for k, v in value.items()}
        return {
            "history": [dataclasses.asdict(r) for r in self.history.rounds],
            "arrays": arrays,
            **self.screen.state(),
        }

    def load_strategy_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`strategy_state` (a resumed run)."""
        from strategies.history import round_from_dict

        self.history = RunHistory([round_from_dict(r) for r in state.get("history", [])])
        for name, value in (state.get("arrays") or {}).items():
            if name not in self.resume_attributes:
                raise ValueError(
                    f"checkpoint holds strategy state {name!r} that {type(self).__name__} "
                    f"does not use (expected {list(self.resume_attributes) or 'none'}): was it "
                    "written by a run with another strategy?"
                )
            setattr(self, name, {k: np.asarray(v) for k, v in value.items()})
        self.screen.load_state(state)

    def _fail(self, record: RoundRecord, stage: str, node: int, reason: str) -> None:
        """One site's failure of one round: history (and so the run store) and the log."""
        site = self.screen.name(node)
        record.failures.append(SiteFailure(record.round, stage, node, reason, site=site))
        _log.warning(
            "round %d: %s failed the %s stage: %s",
            record.round,
            site or f"node {node}",
            stage,
            reason,
        )

    def _record_missing(
        self,
        record: RoundRecord,
        stage: str,
        replies: list[Message],
        senders: dict[str, int],
        rejected: list[Rejection] = (),  # type: ignore[assignment]
    ) -> None:
        """Nodes asked this round that sent nothing back (timeout, crash, disconnect)."""
        seen = {self._node(m, senders) for m in replies} | {r.node_id for r in rejected}
        for node in (int(m.metadata.dst_node_id) for m in self._asked.get(stage, [])):
            if node not in seen:
                self._fail(record, stage, node, "no reply within the round timeout")

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        replies = list(replies)
        record = self.history.round(server_round)
        total: ScoreSummary | None = None
        senders = self._senders("evaluate")
        checks = self.update_checks or UpdateChecks()
        self._record_missing(record, "evaluate", replies, senders)
        for msg in replies:
            node = self._node(msg, senders)
            if msg.has_error():
                self._fail(record, "evaluate", node, error_reason(msg.error.code, msg.error.reason))
                continue
            summary, reason = self.screen.evaluate(msg, node, checks)
            if summary is None or (total is not None and total.hist.shape != summary.hist.shape):
                reason = reason or "score summary of another shape than the round's other sites'"
                self._fail(record, "evaluate", node, reason)
                continue
            record.sites[self.screen.name(node)] = {**summary_metrics(summary), "n": summary.n}
            total = summary if total is None else total + summary
        if total is not None:
            record.global_metrics = {**summary_metrics(total), "n": total.n}
            record.global_summary = total.to_record()
        record.seconds = time.perf_counter() - self._round_started
        _log.info(
            "round %d: global %s | %s",
            server_round,
            _brief(record.global_metrics),
            "; ".join(f"{site}: {_brief(m)}" for site, m in sorted(record.sites.items())),
        )
        if self.on_round_end is not None:
            self.on_round_end(record)
        if not record.global_metrics:
            return None
        scalars = {
            k: float(v) for k, v in record.global_metrics.items() if isinstance(v, int | float)
        }
        return MetricRecord(scalars)


def _brief(metrics: dict[str, object]) -> str:
    keys = ("auc", "accuracy", "sensitivity", "specificity", "loss")
    parts = []
    for key in keys:
        value = metrics.get(key)
        if isinstance(value, float):
            parts.append(f"{key} {value:.3f}")
    return ", ".join(parts) or "-"
