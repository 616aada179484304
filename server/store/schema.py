"""The run store's tables (SQLAlchemy 2.x ORM), portable between SQLite and PostgreSQL.

Every table name starts with ``fedfusion_`` so that the store can live in a database shared
with other applications. Metric dictionaries are JSON (NaN stored as null); nothing here holds
patient-level data: only what sites share (counts, sums, score histograms) and run metadata.

Tables:

===============================  ==============================================================
``fedfusion_runs``               one row per run: task, model, strategy, status, resolved config,
                                 rounds done/planned and best global AUC (kept up to date so the
                                 runs list needs no join)
``fedfusion_rounds``             one row per finished round: global metrics, the summed score
                                 summary and the ROC curves built from it, duration
``fedfusion_site_results``       one row per (round, site): evaluation and training metrics, or
                                 why the site did not contribute
``fedfusion_site_status``        one row per (run, site): examples, last seen, contributions,
                                 failures, last round duration
``fedfusion_privacy_spend``      a site's reported privacy spend (epsilon, delta) and budget
``fedfusion_audit_events``       what happened when (run started/finished, site failures, ...)
``fedfusion_checkpoints``        the global model file saved after each round
===============================  ==============================================================
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "AuditEvent",
    "Base",
    "Checkpoint",
    "PrivacySpend",
    "Round",
    "Run",
    "RUN_STATUSES",
    "SCHEMA_VERSION",
    "SiteResult",
    "SiteStatus",
    "utcnow",
]

#: Bumped when a table changes incompatibly; stored in each run's row.
SCHEMA_VERSION = 1

#: The values of ``Run.status``.
RUN_STATUSES = ("running", "finished", "failed")


# Python None stored as SQL NULL (plain JSON would store the JSON text 'null', which
# "IS NOT NULL" filters do not skip).
_NULLABLE_JSON = JSON(none_as_null=True)


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base of the run store's tables."""


class Run(Base):
    """One federated run (one ServerApp execution)."""

    __tablename__ = "fedfusion_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    task: Mapped[str] = mapped_column(String(100))
    model: Mapped[str] = mapped_column(String(100))
    backbone: Mapped[str] = mapped_column(String(100), default="")
    strategy: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20), default="running", index=True)
    rounds_planned: Mapped[int] = mapped_column(Integer, default=0)
    rounds_done: Mapped[int] = mapped_column(Integer, default=0)
    best_auc: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_auc: Mapped[float | None] = mapped_column(Float, nullable=True)
    classes: Mapped[list[str]] = mapped_column(JSON, default=list)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    out_dir: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    schema_version: Mapped[int] = mapped_column(Integer, default=SCHEMA_VERSION)


class Round(Base):
    """One finished round of a run."""

    __tablename__ = "fedfusion_rounds"
    __table_args__ = (UniqueConstraint("run_id", "round", name="uq_fedfusion_rounds_run_round"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("fedfusion_runs.id", ondelete="CASCADE"))
    round: Mapped[int] = mapped_column(Integer)
    global_metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    summary: Mapped[dict[str, Any] | None] = mapped_column(_NULLABLE_JSON, nullable=True)
    roc: Mapped[dict[str, Any] | None] = mapped_column(_NULLABLE_JSON, nullable=True)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    sites_ok: Mapped[int] = mapped_column(Integer, default=0)
    sites_failed: Mapped[int] = mapped_column(Integer, default=0)
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SiteResult(Base):
    """What one site contributed to one round (or why it did not)."""

    __tablename__ = "fedfusion_site_results"
    __table_args__ = (
        UniqueConstraint("run_id", "round", "site", name="uq_fedfusion_site_results"),
        Index("ix_fedfusion_site_results_run_round", "run_id", "round"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("fedfusion_runs.id", ondelete="CASCADE"))
    round: Mapped[int] = mapped_column(Integer)
    site: Mapped[str] = mapped_column(String(200))
    evaluate: Mapped[dict[str, Any] | None] = mapped_column(_NULLABLE_JSON, nullable=True)
    train: Mapped[dict[str, Any] | None] = mapped_column(_NULLABLE_JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class SiteStatus(Base):
    """The latest known state of one site in one run."""

    __tablename__ = "fedfusion_site_status"
    __table_args__ = (UniqueConstraint("run_id", "site", name="uq_fedfusion_site_status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("fedfusion_runs.id", ondelete="CASCADE"))
    site: Mapped[str] = mapped_column(String(200))
    train_examples: Mapped[int | None] = mapped_column(Integer, nullable=True)
    eval_examples: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rounds_ok: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_round: Mapped[int] = mapped_column(Integer, default=0)
    last_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    total_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    timed_rounds: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_seen: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class PrivacySpend(Base):
    """A site's privacy spend as it reported it (the site owns and enforces its budget)."""

    __tablename__ = "fedfusion_privacy_spend"
    __table_args__ = (Index("ix_fedfusion_privacy_run_site", "run_id", "site"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("fedfusion_runs.id", ondelete="CASCADE"))
    site: Mapped[str] = mapped_column(String(200))
    round: Mapped[int | None] = mapped_column(Integer, nullable=True)
    epsilon: Mapped[float] = mapped_column(Float)
    delta: Mapped[float | None] = mapped_column(Float, nullable=True)
    budget_epsilon: Mapped[float | None] = mapped_column(Float, nullable=True)
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuditEvent(Base):
    """Something that happened in a run, for the audit trail (never patient data)."""

    __tablename__ = "fedfusion_audit_events"
    __table_args__ = (Index("ix_fedfusion_audit_run", "run_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int | None] = mapped_column(
        ForeignKey("fedfusion_runs.id", ondelete="CASCADE"), nullable=True
    )
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    kind: Mapped[str] = mapped_column(String(100))
    site: Mapped[str | None] = mapped_column(String(200), nullable=True)
    round: Mapped[int | None] = mapped_column(Integer, nullable=True)
    message: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Checkpoint(Base):
    """The global model saved after a round (the file lives outside the database)."""

    __tablename__ = "fedfusion_checkpoints"
    __table_args__ = (UniqueConstraint("run_id", "round", name="uq_fedfusion_checkpoints"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("fedfusion_runs.id", ondelete="CASCADE"))
    round: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
