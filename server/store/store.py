"""The run store: what the ServerApp writes during a run and the dashboard reads.

A :class:`RunStore` wraps one SQLAlchemy engine. Writes are small single transactions (a round
is a handful of rows); reads return plain JSON-ready dictionaries, so the dashboard never sees
ORM objects. SQLite (a file; the default) and PostgreSQL (``postgresql+psycopg://...``) are
both supported; any other SQLAlchemy URL may work but is not tested.

Example::

    store = RunStore("runs.sqlite")               # a path means a SQLite file
    run_id = store.start_run(name="dc/fedavg", task="rcc-grading", model="mufnet",
                             strategy="fedavg", rounds_planned=3)
    store.record_round(run_id, round_record)      # a strategies.history.RoundRecord
    store.finish_run(run_id)
    store.list_runs()
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Engine, create_engine, delete, event, func, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from server.store.schema import (
    RUN_STATUSES,
    AuditEvent,
    Base,
    Checkpoint,
    PrivacySpend,
    Round,
    Run,
    SiteResult,
    SiteStatus,
    utcnow,
)

if TYPE_CHECKING:
    from strategies.history import SiteFailure

__all__ = [
    "PRIVACY_KEYS",
    "RoundLike",
    "RunStore",
    "RunStoreError",
    "redact_url",
    "store_url",
]

_log = logging.getLogger(__name__)

#: Keys a site's *train* metrics may carry to report its privacy spend; the first key of each
#: tuple found is used. ``epsilon`` (spent so far) is required for a spend row to be written.
PRIVACY_KEYS: dict[str, tuple[str, ...]] = {
    "epsilon": ("dp-epsilon-spent", "epsilon-spent", "epsilon"),
    "delta": ("dp-delta", "delta"),
    "budget": ("dp-epsilon-budget", "epsilon-budget", "dp-budget"),
}


class RunStoreError(ValueError):
    """The run store cannot be opened, or a request names something it does not hold."""


class RoundLike(Protocol):
    """What :meth:`RunStore.record_round` reads (``strategies.history.RoundRecord`` fits)."""

    round: int
    global_metrics: dict[str, Any]
    sites: dict[str, dict[str, Any]]
    train: dict[str, dict[str, Any]]
    failures: Sequence[SiteFailure]
    global_summary: dict[str, Any]
    seconds: float


def store_url(target: str | Path) -> str:
    """A SQLAlchemy URL for ``target``: a URL is kept, a file path becomes ``sqlite:///ABS``.

    ``postgresql://`` URLs get the psycopg (v3) driver, the one fedfusion installs.

    Raises:
        RunStoreError: when ``target`` is empty or not a valid URL.
    """
    text = str(target).strip()
    if not text:
        raise RunStoreError("run store: expected a SQLAlchemy URL or a SQLite file path, got ''")
    if "://" not in text:
        return "sqlite:///" + str(Path(text).expanduser().resolve())
    try:
        url = make_url(text)
    except ArgumentError as err:
        raise RunStoreError(f"run store: not a valid database URL {redact_url(text)!r}") from err
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url.render_as_string(hide_password=False)


#: Query parameters of a database URL whose values :func:`redact_url` hides.
_SECRET_QUERY = re.compile(
    r"(?i)(?P<key>[?&](?:password|passwd|pwd|sslpassword|[^=&]*(?:secret|token)[^=&]*)=)"
    r"[^&#]*"
)


def redact_url(url: str | Path) -> str:
    """``url`` for logs, configs and pages, with any password replaced by ``***``.

    A plain path (no ``scheme://``, i.e. a SQLite file) is shown as it is. In a URL the
    password of the user-info part (``postgresql://user:***@host/db``) and the values of
    ``password=``-like query parameters are hidden; everything else is kept as written. The
    text is not parsed as a database URL, so a URL that SQLAlchemy rejects is still shown
    (masked) rather than dropped, and a password with an unescaped ``@``, ``/`` or ``?`` is
    hidden whole (up to the last ``@``). ``redact_url(redact_url(u)) == redact_url(u)``.

    Examples:
        ``runs.sqlite`` -> ``runs.sqlite``;
        ``postgresql://fed:s3cret@db:5432/runs`` -> ``postgresql://fed:***@db:5432/runs``.
    """
    text = str(url)
    scheme, sep, rest = text.partition("://")
    if not sep:
        return text  # a file path
    at = rest.rfind("@")
    if at >= 0:
        user, colon, _password = rest[:at].partition(":")
        if colon:
            rest = f"{user}:***{rest[at:]}"
    return _SECRET_QUERY.sub(r"\g<key>***", f"{scheme}://{rest}")


def _displayed_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """A stored run config as pages and the API show it: ``db-url`` redacted again (rows may
    come from another writer)."""
    shown = dict(config or {})
    if isinstance(shown.get("db-url"), str) and shown["db-url"]:
        shown["db-url"] = redact_url(shown["db-url"])
    return shown


def _sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    if parsed.database == ":memory:" or parsed.database.startswith("file:"):
        return None
    return Path(parsed.database)


def _iso(value: datetime | None) -> str | None:
    """ISO-8601 UTC text; SQLite returns naive datetimes, which are UTC here."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _json_safe(value: Any) -> Any:
    """NaN/inf become None and numpy scalars plain numbers (PostgreSQL rejects NaN in JSON)."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and callable(value.item):
        return _json_safe(value.item())
    return value


def _first(metrics: Mapping[str, Any], keys: Iterable[str]) -> float | None:
    for key in keys:
        if key in metrics:
            return _finite(metrics[key])
    return None


class RunStore:
    """Read and write fedfusion runs in a SQL database.

    Args:
        target: a SQLAlchemy URL (``sqlite:///runs.sqlite``,
            ``postgresql+psycopg://user:pw@host/db``) or a SQLite file path.
        create: open for writing: create missing tables (and the SQLite file's folder) and put
            SQLite in WAL mode. Default True. With False (readers such as the dashboard)
            nothing is written, and a missing SQLite file or missing tables are errors.
        echo: log every SQL statement (debugging). Default False.

    Raises:
        RunStoreError: when the database cannot be reached or the file is missing.
    """

    def __init__(self, target: str | Path, *, create: bool = True, echo: bool = False) -> None:
        self.url = store_url(target)
        self.sqlite_path = _sqlite_path(self.url)
        if self.sqlite_path is not None:
            if create:
                self.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
            elif not self.sqlite_path.is_file():
                raise RunStoreError(
                    f"run store: no SQLite file at {self.sqlite_path} (expected the runs.sqlite "
                    "that `fedfusion simulate` or the ServerApp's db-url wrote)"
                )
        self.engine = _make_engine(self.url, echo=echo, writer=create)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        try:
            if create:
                Base.metadata.create_all(self.engine)
            has_tables = inspect(self.engine).has_table(Run.__tablename__)
        except Exception as err:  # noqa: BLE001 - any driver error means "cannot open"
            self.engine.dispose()
            raise RunStoreError(
                f"run store: cannot open {redact_url(self.url)}: {type(err).__name__}: {err}"
            ) from err
        if not has_tables:
            self.engine.dispose()
            raise RunStoreError(
                f"run store: {redact_url(self.url)} holds no fedfusion tables (has a run "
                "written to it yet?)"
            )

    def __repr__(self) -> str:
        return f"RunStore({redact_url(self.url)!r})"

    @property
    def display_url(self) -> str:
        """The URL with any password hidden."""
        return redact_url(self.url)

    def close(self) -> None:
        """Release the engine's connections."""
        self.engine.dispose()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writes

    def start_run(
        self,
        *,
        task: str,
        model: str,
        strategy: str,
        rounds_planned: int,
        name: str = "",
        backbone: str = "",
        classes: Sequence[str] = (),
        config: Mapping[str, Any] | None = None,
        out_dir: str = "",
    ) -> int:
        """Add a run with status ``running``; returns its id.

        Args:
            task: task preset name.
            model: model registry name.
            strategy: aggregation strategy name (e.g. ``"fedavg"``).
            rounds_planned: the number of server rounds the run will execute.
            name: a label for people (e.g. ``"dual-center/fedavg"``). Default "".
            backbone: the backbone name. Default "".
            classes: class names (index 1 is the positive class of a binary task).
            config: the resolved run config (passwords in ``db-url`` are hidden).
            out_dir: where the run writes its files. Default "".
        """
        safe_config = _json_safe(dict(config or {}))
        if isinstance(safe_config.get("db-url"), str) and safe_config["db-url"]:
            safe_config["db-url"] = redact_url(safe_config["db-url"])
        now = utcnow()
        run = Run(
            name=name,
            task=task,
            model=model,
            backbone=backbone,
            strategy=strategy,
            status="running",
            rounds_planned=int(rounds_planned),
            classes=list(classes),
            config=safe_config,
            out_dir=str(out_dir),
            started_at=now,
            updated_at=now,
        )
        with self._session.begin() as session:
            session.add(run)
            session.flush()
            session.add(AuditEvent(run_id=run.id, kind="run-started", message=name or task))
            return int(run.id)

    def record_round(self, run_id: int, record: RoundLike) -> None:
        """Write one finished round: global and per-site results, site status, privacy spend.

        Writing a round that is already stored replaces it (a resumed run may repeat one).
        """
        now = utcnow()
        global_metrics = _json_safe(record.global_metrics)
        failures: dict[str, list[str]] = {}
        for failure in record.failures:
            label = getattr(failure, "site", "") or f"node {failure.node_id}"
            failures.setdefault(label, []).append(f"{failure.stage}: {failure.reason}")
        site_names = sorted(set(record.sites) | set(record.train) | set(failures))
        with self._session.begin() as session:
            run = self._run(session, run_id)
            statuses = {
                s.site: s
                for s in session.scalars(select(SiteStatus).where(SiteStatus.run_id == run_id))
            }
            self._forget_round(session, run_id, record.round, statuses)
            session.add(
                Round(
                    run_id=run_id,
                    round=record.round,
                    global_metrics=global_metrics,
                    summary=_json_safe(record.global_summary) or None,
                    roc=_roc_curves(record.global_summary),
                    seconds=float(record.seconds),
                    sites_ok=len(record.sites),
                    sites_failed=len(failures),
                    finished_at=now,
                )
            )
            for site in site_names:
                evaluate = record.sites.get(site)
                train = record.train.get(site)
                error = "; ".join(failures[site]) if site in failures else None
                session.add(
                    SiteResult(
                        run_id=run_id,
                        round=record.round,
                        site=site,
                        evaluate=_json_safe(evaluate) if evaluate is not None else None,
                        train=_json_safe(train) if train is not None else None,
                        error=error,
                    )
                )
                status = statuses.get(site)
                if status is None:
                    status = SiteStatus(
                        run_id=run_id,
                        site=site,
                        rounds_ok=0,
                        failures=0,
                        total_seconds=0.0,
                        timed_rounds=0,
                    )
                    statuses[site] = status
                    session.add(status)
                status.last_round = max(status.last_round or 0, record.round)
                if error is not None:
                    status.failures = (status.failures or 0) + 1
                    status.last_error = error
                    session.add(
                        AuditEvent(
                            run_id=run_id,
                            kind="site-failure",
                            site=site,
                            round=record.round,
                            message=error,
                            at=now,
                        )
                    )
                if evaluate is not None or train is not None:
                    status.rounds_ok = (status.rounds_ok or 0) + 1
                    status.last_seen = now
                if train is not None:
                    examples = _finite(train.get("num-examples"))
                    if examples is not None:
                        status.train_examples = int(examples)
                    seconds = _finite(train.get("train-seconds"))
                    if seconds is not None:
                        status.last_seconds = seconds
                        status.total_seconds = (status.total_seconds or 0.0) + seconds
                        status.timed_rounds = (status.timed_rounds or 0) + 1
                    epsilon = _first(train, PRIVACY_KEYS["epsilon"])
                    if epsilon is not None:
                        session.add(
                            PrivacySpend(
                                run_id=run_id,
                                site=site,
                                round=record.round,
                                epsilon=epsilon,
                                delta=_first(train, PRIVACY_KEYS["delta"]),
                                budget_epsilon=_first(train, PRIVACY_KEYS["budget"]),
                                recorded_at=now,
                            )
                        )
                if evaluate is not None:
                    n = _finite(evaluate.get("n"))
                    if n is not None:
                        status.eval_examples = int(n)
            auc = _finite(global_metrics.get("auc"))
            run.rounds_done = max(run.rounds_done or 0, record.round)
            run.last_auc = auc
            if auc is not None and (run.best_auc is None or auc > run.best_auc):
                run.best_auc = auc
            run.updated_at = now

    def record_privacy(
        self,
        run_id: int,
        site: str,
        *,
        epsilon: float,
        delta: float | None = None,
        budget: float | None = None,
        round: int | None = None,
    ) -> None:
        """Write a site's reported privacy spend.

        Args:
            run_id: the run.
            site: the site's name.
            epsilon: epsilon spent so far (>= 0).
            delta: the delta of the accountant. Default None.
            budget: the site's epsilon budget. Default None (not reported).
            round: the round after which it was measured. Default None.

        Raises:
            RunStoreError: for a negative or non-finite epsilon or budget.
        """
        problems = []
        if _finite(epsilon) is None or epsilon < 0:
            problems.append(f"epsilon must be a finite number >= 0, got {epsilon!r}")
        if budget is not None and (_finite(budget) is None or budget <= 0):
            problems.append(f"budget must be a finite number > 0, got {budget!r}")
        if problems:
            raise RunStoreError("privacy spend: " + "; ".join(problems))
        with self._session.begin() as session:
            self._run(session, run_id)
            session.add(
                PrivacySpend(
                    run_id=run_id,
                    site=site,
                    round=round,
                    epsilon=float(epsilon),
                    delta=delta,
                    budget_epsilon=budget,
                )
            )

    def record_event(
        self,
        run_id: int | None,
        kind: str,
        message: str = "",
        *,
        site: str | None = None,
        round: int | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Append an audit event (``kind`` is a short tag such as ``"site-failure"``)."""
        with self._session.begin() as session:
            session.add(
                AuditEvent(
                    run_id=run_id,
                    kind=kind,
                    message=message,
                    site=site,
                    round=round,
                    details=_json_safe(dict(details or {})),
                )
            )

    def add_checkpoint(self, run_id: int, round: int, path: str | Path) -> None:
        """Record the global model file saved after ``round`` (its size and SHA-256 are read)."""
        file = Path(path).resolve()
        digest = hashlib.sha256()
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        with self._session.begin() as session:
            self._run(session, run_id)
            session.execute(
                delete(Checkpoint).where(Checkpoint.run_id == run_id, Checkpoint.round == round)
            )
            session.add(
                Checkpoint(
                    run_id=run_id,
                    round=round,
                    path=str(file),
                    size_bytes=file.stat().st_size,
                    sha256=digest.hexdigest(),
                )
            )

    def resume_run(self, run_id: int, *, from_round: int) -> None:
        """Mark a crashed or stopped run ``running`` again: it continues after ``from_round``.

        Rounds stored beyond ``from_round`` (the crashed run got further than its last
        checkpoint) are removed; the resumed run writes them again.

        Raises:
            RunStoreError: when there is no such run.
        """
        now = utcnow()
        with self._session.begin() as session:
            run = self._run(session, run_id)
            statuses = {
                s.site: s
                for s in session.scalars(select(SiteStatus).where(SiteStatus.run_id == run_id))
            }
            later = session.scalars(
                select(Round.round).where(Round.run_id == run_id, Round.round > from_round)
            ).all()
            for server_round in later:
                self._forget_round(session, run_id, server_round, statuses)
            run.status = "running"
            run.error = None
            run.ended_at = None
            run.rounds_done = min(run.rounds_done or 0, from_round)
            run.updated_at = now
            session.add(
                AuditEvent(
                    run_id=run_id,
                    kind="run-resumed",
                    round=from_round,
                    message=f"resumed after round {from_round}",
                    at=now,
                )
            )

    def finish_run(
        self, run_id: int, *, status: str = "finished", error: str | None = None
    ) -> None:
        """Mark a run ``finished`` or ``failed`` (with the error text)."""
        if status not in RUN_STATUSES or status == "running":
            raise RunStoreError(f"status must be 'finished' or 'failed', got {status!r}")
        now = utcnow()
        with self._session.begin() as session:
            run = self._run(session, run_id)
            run.status = status
            run.error = error
            run.ended_at = now
            run.updated_at = now
            session.add(
                AuditEvent(run_id=run_id, kind=f"run-{status}", message=error or "", at=now)
            )

    # ------------------------------------------------------------------ reads

    def list_runs(self, *, limit: int | None = None) -> list[dict[str, Any]]:
        """Every run, newest first, as the runs list shows them."""
        query = select(Run).order_by(Run.id.desc())
        if limit is not None:
            query = query.limit(limit)
        with self._session() as session:
            return [_run_summary(run) for run in session.scalars(query)]

    def latest_run_id(self) -> int | None:
        """The id of the most recently started run, or None for an empty store."""
        with self._session() as session:
            return session.scalar(select(func.max(Run.id)))

    def get_run(self, run_id: int) -> dict[str, Any]:
        """One run's summary plus its classes, resolved config and error.

        Raises:
            RunStoreError: when there is no such run.
        """
        with self._session() as session:
            run = self._run(session, run_id)
            return {
                **_run_summary(run),
                "classes": list(run.classes or []),
                "config": _displayed_config(run.config),
                "out_dir": run.out_dir,
                "error": run.error,
            }

    def rounds(self, run_id: int, *, after: int = 0) -> list[dict[str, Any]]:
        """The run's rounds numbered above ``after``, each with its per-site results.

        Each entry: ``{"round", "global", "seconds", "finished_at", "sites": {site: metrics},
        "train": {site: metrics}, "errors": {site: text}}``.
        """
        with self._session() as session:
            self._run(session, run_id)
            rows = session.execute(
                select(Round.round, Round.global_metrics, Round.seconds, Round.finished_at)
                .where(Round.run_id == run_id, Round.round > after)
                .order_by(Round.round)
            ).all()
            out = {
                r.round: {
                    "round": r.round,
                    "global": r.global_metrics or {},
                    "seconds": r.seconds,
                    "finished_at": _iso(r.finished_at),
                    "sites": {},
                    "train": {},
                    "errors": {},
                }
                for r in rows
            }
            results = session.execute(
                select(
                    SiteResult.round,
                    SiteResult.site,
                    SiteResult.evaluate,
                    SiteResult.train,
                    SiteResult.error,
                ).where(SiteResult.run_id == run_id, SiteResult.round > after)
            ).all()
        for r in results:
            entry = out.get(r.round)
            if entry is None:  # written between the two queries: next poll gets it
                continue
            if r.evaluate is not None:
                entry["sites"][r.site] = r.evaluate
            if r.train is not None:
                entry["train"][r.site] = r.train
            if r.error is not None:
                entry["errors"][r.site] = r.error
        return list(out.values())

    def round_summary(
        self, run_id: int, round: int | None = None
    ) -> tuple[int, dict[str, Any]] | None:
        """``(round, summed ScoreSummary record)`` of ``round`` (default: the last with one)."""
        with self._session() as session:
            self._run(session, run_id)
            query = select(Round.round, Round.summary).where(
                Round.run_id == run_id, Round.summary.is_not(None)
            )
            if round is not None:
                query = query.where(Round.round == round)
            row = session.execute(query.order_by(Round.round.desc()).limit(1)).first()
        if row is None or not row.summary:
            return None
        return int(row.round), dict(row.summary)

    def roc(self, run_id: int, round: int | None = None) -> dict[str, Any] | None:
        """The ROC curves and confusion matrix of ``round`` (default: the last round with
        curves), or None when no round has them.

        Returns:
            ``{"round", "curves": [{"positive", "fpr", "tpr", "auc"}], "confusion",
            "classes"}``: one curve for a binary task (class 1), one per class otherwise.
        """
        with self._session() as session:
            run = self._run(session, run_id)
            query = select(Round.round, Round.roc, Round.global_metrics).where(
                Round.run_id == run_id, Round.roc.is_not(None)
            )
            if round is not None:
                query = query.where(Round.round == round)
            row = session.execute(query.order_by(Round.round.desc()).limit(1)).first()
            classes = list(run.classes or [])
        if row is None or not row.roc:
            return None
        metrics = row.global_metrics or {}
        return {
            "round": int(row.round),
            "curves": row.roc.get("curves", []),
            "confusion": metrics.get("confusion"),
            "classes": classes,
        }

    def sites(self, run_id: int) -> list[dict[str, Any]]:
        """The sites panel: each site's status and its latest privacy spend (or None)."""
        with self._session() as session:
            self._run(session, run_id)
            statuses = session.scalars(
                select(SiteStatus).where(SiteStatus.run_id == run_id).order_by(SiteStatus.site)
            ).all()
            latest = (
                select(PrivacySpend.site, func.max(PrivacySpend.id).label("id"))
                .where(PrivacySpend.run_id == run_id)
                .group_by(PrivacySpend.site)
                .subquery()
            )
            spends = {
                p.site: p
                for p in session.scalars(
                    select(PrivacySpend).join(latest, PrivacySpend.id == latest.c.id)
                )
            }
        out = []
        names = sorted({s.site for s in statuses} | set(spends))
        by_name = {s.site: s for s in statuses}
        for name in names:
            status = by_name.get(name)
            spend = spends.get(name)
            rounds_ok = status.rounds_ok if status else 0
            out.append(
                {
                    "site": name,
                    "train_examples": status.train_examples if status else None,
                    "eval_examples": status.eval_examples if status else None,
                    "rounds_ok": rounds_ok,
                    "failures": status.failures if status else 0,
                    "last_round": status.last_round if status else None,
                    "last_seen": _iso(status.last_seen) if status else None,
                    "last_seconds": status.last_seconds if status else None,
                    "mean_seconds": (
                        status.total_seconds / status.timed_rounds
                        if status and status.timed_rounds
                        else None
                    ),
                    "last_error": status.last_error if status else None,
                    "privacy": None
                    if spend is None
                    else {
                        "epsilon": spend.epsilon,
                        "delta": spend.delta,
                        "budget": spend.budget_epsilon,
                        "round": spend.round,
                        "recorded_at": _iso(spend.recorded_at),
                    },
                }
            )
        return out

    def checkpoints(self, run_id: int) -> list[dict[str, Any]]:
        """The run's saved global models, by round."""
        with self._session() as session:
            self._run(session, run_id)
            rows = session.scalars(
                select(Checkpoint).where(Checkpoint.run_id == run_id).order_by(Checkpoint.round)
            ).all()
        return [_checkpoint_dict(c) for c in rows]

    def checkpoint(self, run_id: int, round: int) -> dict[str, Any] | None:
        """One checkpoint (with its file path), or None."""
        with self._session() as session:
            row = session.scalar(
                select(Checkpoint).where(Checkpoint.run_id == run_id, Checkpoint.round == round)
            )
        return None if row is None else _checkpoint_dict(row)

    def events(self, run_id: int, *, limit: int = 100) -> list[dict[str, Any]]:
        """The run's latest audit events, newest first."""
        with self._session() as session:
            rows = session.scalars(
                select(AuditEvent)
                .where(AuditEvent.run_id == run_id)
                .order_by(AuditEvent.id.desc())
                .limit(limit)
            ).all()
        return [
            {
                "at": _iso(e.at),
                "kind": e.kind,
                "site": e.site,
                "round": e.round,
                "message": e.message,
                "details": e.details or {},
            }
            for e in rows
        ]

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _forget_round(
        session: Session, run_id: int, server_round: int, statuses: dict[str, SiteStatus]
    ) -> None:
        """Remove a round written before (a resumed run repeats it) and undo its counts."""
        existing = session.scalar(
            select(Round.id).where(Round.run_id == run_id, Round.round == server_round)
        )
        if existing is None:
            return
        old = session.scalars(
            select(SiteResult).where(SiteResult.run_id == run_id, SiteResult.round == server_round)
        ).all()
        for row in old:
            status = statuses.get(row.site)
            if status is None:
                continue
            if row.evaluate is not None or row.train is not None:
                status.rounds_ok = max(0, (status.rounds_ok or 0) - 1)
            if row.error is not None:
                status.failures = max(0, (status.failures or 0) - 1)
            seconds = _finite((row.train or {}).get("train-seconds"))
            if seconds is not None:
                status.total_seconds = max(0.0, (status.total_seconds or 0.0) - seconds)
                status.timed_rounds = max(0, (status.timed_rounds or 0) - 1)
        for table in (Round, SiteResult, PrivacySpend):
            session.execute(
                delete(table).where(table.run_id == run_id, table.round == server_round)
            )
        session.execute(
            delete(AuditEvent).where(
                AuditEvent.run_id == run_id,
                AuditEvent.round == server_round,
                AuditEvent.kind == "site-failure",
            )
        )
        session.flush()

    @staticmethod
    def _run(session: Session, run_id: int) -> Run:
        run = session.get(Run, run_id)
        if run is None:
            raise RunStoreError(f"run store: no run with id {run_id}")
        return run


def _roc_curves(summary: Mapping[str, Any]) -> dict[str, Any] | None:
    """ROC curves from a summed ScoreSummary record, computed once when the round is written
    (so the dashboard needs neither torch nor the models package); None without a summary."""
    if not summary:
        return None
    from models.metrics import MetricsInputError, ScoreSummary, roc_curve_from_summary

    try:
        parsed = ScoreSummary.from_record(summary)
    except MetricsInputError as err:
        _log.warning("run store: round summary not usable for a ROC curve: %s", err)
        return None
    k = parsed.num_classes
    curves = []
    for positive in [1] if k == 2 else range(k):
        fpr, tpr = roc_curve_from_summary(parsed, positive)
        area = float(((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2.0).sum())
        curves.append({"positive": positive, "fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": area})
    return _json_safe({"curves": curves, "num_classes": k, "n": parsed.n})


def _run_summary(run: Run) -> dict[str, Any]:
    return {
        "id": run.id,
        "name": run.name,
        "task": run.task,
        "model": run.model,
        "backbone": run.backbone,
        "strategy": run.strategy,
        "status": run.status,
        "rounds_done": run.rounds_done,
        "rounds_planned": run.rounds_planned,
        "best_auc": run.best_auc,
        "last_auc": run.last_auc,
        "started_at": _iso(run.started_at),
        "updated_at": _iso(run.updated_at),
        "ended_at": _iso(run.ended_at),
    }


def _checkpoint_dict(row: Checkpoint) -> dict[str, Any]:
    return {
        "round": row.round,
        "path": row.path,
        "size_bytes": row.size_bytes,
        "sha256": row.sha256,
        "created_at": _iso(row.created_at),
    }


def _make_engine(url: str, *, echo: bool, writer: bool) -> Engine:
    """An engine tuned for short writes beside concurrent dashboard reads."""
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        engine = create_engine(url, echo=echo, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            if writer:
                # WAL: the dashboard reads while the ServerApp writes, without either waiting.
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    connect_args: dict[str, Any] = {}
    if backend == "postgresql":
        connect_args["connect_timeout"] = 10
    return create_engine(url, echo=echo, pool_pre_ping=True, connect_args=connect_args)
