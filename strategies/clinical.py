"""Clinical metrics for any Flower strategy, built from what sites may share.

:class:`ClinicalMetricsMixin` goes before a Flower strategy class in the bases: weights are
aggregated by that strategy; evaluation replies carry each site's
:class:`~models.metrics.ScoreSummary` (per-class score histograms and confusion counts) and
global metrics are computed from their sum, never from per-patient scores.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from flwr.app import ArrayRecord, Message, MetricRecord

from models.metrics import ScoreSummary, summary_metrics
from strategies.history import RoundRecord, RunHistory, SiteFailure

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
    """Per-site and global clinical metrics recorded in :attr:`history`.

    Args:
        on_round_end: called with the finished :class:`RoundRecord` after each evaluation.
        **kwargs: passed to the Flower strategy that follows this mixin in the bases.
    """

    #: Set by the ServerApp to record who was asked/answered and each update's norm.
    audit: AuditTrail | None = None

    def __init__(self, *, on_round_end: RoundCallback | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.history = RunHistory()
        self.on_round_end = on_round_end
        self._round_started = time.perf_counter()

    def configure_train(self, server_round, arrays, config, grid):  # type: ignore[no-untyped-def]
        self._round_started = time.perf_counter()
        messages = super().configure_train(server_round, arrays, config, grid)
        if self.audit is not None:
            messages = list(messages)
            self.audit.start_round(
                server_round, arrays=arrays, asked=[m.metadata.dst_node_id for m in messages]
            )
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self.record_train_replies(server_round, replies)
        return super().aggregate_train(server_round, replies)

    def record_train_replies(self, server_round: int, replies: list[Message]) -> None:
        """Audit the round's train replies and note each site's scalars or failure in
        :attr:`history` (called by :meth:`aggregate_train`, or by a wrapper that skips it)."""
        if self.audit is not None:
            self.audit.record_train(server_round, replies)
        record = self.history.round(server_round)
        for msg in replies:
            if msg.has_error():
                record.failures.append(
                    SiteFailure(server_round, "train", msg.metadata.src_node_id, msg.error.reason)
                )
                continue
            metrics = next(iter(msg.content.metric_records.values()))
            record.train[site_of(msg)] = dict(metrics)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        replies = list(replies)
        record = self.history.round(server_round)
        total: ScoreSummary | None = None
        for msg in replies:
            if msg.has_error():
                record.failures.append(
                    SiteFailure(
                        server_round, "evaluate", msg.metadata.src_node_id, msg.error.reason
                    )
                )
                _log.warning(
                    "round %d: evaluation failed at node %s: %s",
                    server_round,
                    msg.metadata.src_node_id,
                    msg.error.reason,
                )
                continue
            metrics = next(iter(msg.content.metric_records.values()))
            try:
                summary = ScoreSummary.from_record(metrics)
            except ValueError as err:
                record.failures.append(
                    SiteFailure(server_round, "evaluate", msg.metadata.src_node_id, str(err))
                )
                continue
            site = site_of(msg)
            record.sites[site] = {**summary_metrics(summary), "n": summary.n}
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
