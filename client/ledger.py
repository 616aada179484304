"""A site's privacy ledger on its own disk: every DP-SGD step taken on a data set, across runs.

The site's budget holds over the lifetime of its data set, not over one Flower run: a new run,
a series of runs, a resume or a SuperNode restart must all see what was spent before. So the
history lives in one JSON file per data set under the site's state folder::

    STATE_DIR/privacy-ledger/<dataset id>.json           the ledger (format below)
    STATE_DIR/privacy-ledger/<dataset id>.lock           flock(2) lock file beside it
    STATE_DIR/privacy-ledger/<dataset id>.reset-<UTC>.json  a ledger archived by a reset
    STATE_DIR/privacy-ledger/resets.log                  one JSON line per operator reset

The data set id is the SHA-256 of the manifest CSV's bytes (:func:`dataset_id`): the same
manifest under another path is the same data set; an edited manifest is a new one (the
operator decides whether that is honest, e.g. a corrected typo is not new data).

Every write is atomic (temporary file in the same folder, fsync, ``os.replace``, fsync of the
folder) and every read-modify-write holds an exclusive ``flock`` on the lock file, so two
ClientApp processes of one site (the deployment runtime starts a process per message) never
lose each other's steps. Reads take no lock: a reader sees the file before or after a write,
never half of one (so ``fedfusion site ledger show`` does not wait for a training round).
An unreadable or corrupt ledger raises :class:`LedgerCorruptError` naming the file; it is
never treated as empty, since that would reset the budget (nor is a ledger that vanished after
a reset). Only an operator resets a ledger (:meth:`SiteLedger.reset`,
``fedfusion site ledger reset``): the old file is archived, never deleted, and the reset is
logged.

File format (``"version": 1``)::

    {"format": "fedfusion-privacy-ledger", "version": 1, "dataset_id": "<sha256>",
     "delta": 1e-05 | null,                      # the delta of the latest record
     "created": "<UTC ISO time>", "reset": null | {time, operator, reason, archived_as,
                                                   epsilon_before, delta},
     "entries": [{"noise_multiplier": float, "sample_rate": float, "steps": int,
                  "delta": float, "plan_hash": str, "run_label": str, "round": int,
                  "recorded_at": "<UTC ISO time>"}, ...]}
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from client._durable import append_line, atomic_write
from client.privacy import PrivacyConfigError, PrivacyLedger

__all__ = [
    "LEDGER_DIR",
    "RESETS_LOG",
    "LedgerCorruptError",
    "LedgerEntry",
    "LedgerError",
    "SiteLedger",
    "dataset_id",
]

_log = logging.getLogger(__name__)

#: Folder of the ledgers under the site's state folder.
LEDGER_DIR = "privacy-ledger"
#: Append-only log of operator resets, in :data:`LEDGER_DIR`.
RESETS_LOG = "resets.log"
_FORMAT = "fedfusion-privacy-ledger"
_VERSION = 1
_ID = re.compile(r"[0-9a-f]{64}")


class LedgerError(PrivacyConfigError):
    """The privacy ledger cannot be used as asked (bad arguments, unwritable folder)."""


class LedgerCorruptError(LedgerError):
    """The ledger file exists but cannot be read or parsed; the spent budget is unknown."""


@dataclass(frozen=True)
class LedgerEntry:
    """DP-SGD steps of one record (usually one round), with where they came from.

    Args:
        noise_multiplier: DP-SGD noise multiplier of these steps (> 0).
        sample_rate: Poisson sampling rate (0 < rate <= 1).
        steps: number of optimizer steps (>= 1).
        delta: the delta the site's budget used when they were taken.
        plan_hash: hash of the training plan (or a run label) that asked for them.
        run_label: a free label for the operator (run id, series name); may be empty.
        round: the server round.
        recorded_at: UTC time of the record, ISO 8601.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    plan_hash: str
    run_label: str
    round: int
    recorded_at: str

    @property
    def history(self) -> tuple[float, float, int]:
        """The RDP accountant's ``(noise_multiplier, sample_rate, steps)``."""
        return (self.noise_multiplier, self.sample_rate, self.steps)


def dataset_id(manifest_path: str | Path) -> str:
    """The data set's id: the SHA-256 (hex) of the manifest CSV's bytes.

    Raises:
        LedgerError: the manifest cannot be read.
    """
    digest = hashlib.sha256()
    try:
        with open(manifest_path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as err:
        raise LedgerError(f"cannot read manifest {manifest_path}: {err}") from err
    return digest.hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _epsilon(entries: Iterable[LedgerEntry], delta: float | None) -> float | None:
    history = [e.history for e in entries]
    if not history:
        return 0.0
    if delta is None:
        return None
    return PrivacyLedger(history).spent(delta)


class SiteLedger:
    """The privacy ledger of one data set in one site's state folder.

    Open it with :meth:`open`. Reads (:attr:`entries`, :meth:`privacy_ledger`, :meth:`spent`)
    read the file each time, so they see other processes' records. To check the budget, train
    and record without another process of the site recording in between, hold
    :meth:`transaction` around all three. An instance is not meant to be shared by threads.
    """

    def __init__(self, state_dir: Path, dataset: str) -> None:
        if not _ID.fullmatch(dataset):
            raise LedgerError(f"data set id must be a SHA-256 hex digest, got {dataset!r}")
        self.state_dir = state_dir
        self.dataset_id = dataset
        self.folder = state_dir / LEDGER_DIR
        self.path = self.folder / f"{dataset}.json"
        self.lock_path = self.folder / f"{dataset}.lock"
        self._held = False  # this instance holds the exclusive lock (in a transaction)

    @classmethod
    def open(cls, state_dir: str | Path, manifest_path: str | Path) -> SiteLedger:
        """The ledger of the data set ``manifest_path`` under ``state_dir``; reads it once
        so that a corrupt file is reported here. A missing file is an empty ledger.

        Args:
            state_dir: the site's state folder (created on the first record).
            manifest_path: the site's manifest CSV; its bytes' SHA-256 is the data set id.

        Raises:
            LedgerCorruptError: the ledger file exists but is unreadable or malformed.
            LedgerError: the manifest cannot be read.
        """
        ledger = cls(Path(state_dir), dataset_id(manifest_path))
        ledger._read()
        return ledger

    # ----- reading ------------------------------------------------------------------------

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        """Every recorded entry, oldest first."""
        return tuple(self._read()["entries"])

    @property
    def delta(self) -> float | None:
        """The delta of the latest record (None before any)."""
        return self._read()["delta"]

    def privacy_ledger(self) -> PrivacyLedger:
        """All entries as a :class:`~client.privacy.PrivacyLedger` (RDP history)."""
        return PrivacyLedger([e.history for e in self.entries])

    def spent(self, delta: float | None = None) -> float:
        """Epsilon spent on this data set at ``delta`` (default: the ledger's delta); 0.0
        when nothing was recorded.

        Raises:
            LedgerError: steps were recorded but no delta is known (pass one).
        """
        data = self._read()
        epsilon = _epsilon(data["entries"], delta if delta is not None else data["delta"])
        if epsilon is None:
            raise LedgerError(f"{self.path}: pass the delta to compute the epsilon spent")
        return epsilon

    # ----- writing ------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[SiteLedger]:
        """Hold the ledger's exclusive lock: no other process of the site records (or resets)
        this data set's ledger until the block ends; they wait. Check the budget, train and
        :meth:`record` inside it, so two processes cannot both spend the same remainder.
        Reads elsewhere do not wait. Re-entrant within this instance.

        Raises:
            LedgerError: the ledger folder cannot be created or the lock file opened.
        """
        if self._held:
            yield self
            return
        with self._lock():
            self._held = True
            try:
                yield self
            finally:
                self._held = False

    def record(
        self,
        steps: PrivacyLedger | Iterable[tuple[float, float, int]],
        *,
        plan_hash: str,
        round: int,
        delta: float,
        run_label: str = "",
    ) -> PrivacyLedger:
        """Append NEW steps (this round's only, e.g. ``engine.accountant.history``; not the
        whole ledger again) and write the ledger atomically. Call it before the reply
        leaves the site: once it returns, the steps are on disk.

        Args:
            steps: this round's ``(noise_multiplier, sample_rate, steps)`` tuples, or a
                :class:`PrivacyLedger` holding only them.
            plan_hash: hash of the approved training plan (or a run label) they were for.
            round: the server round.
            delta: the delta of the site's budget.
            run_label: an optional label for the operator's audit. Default "".

        Returns:
            The whole ledger after the record.

        Raises:
            LedgerError: an invalid argument (every problem listed) or an unwritable folder.
            LedgerCorruptError: the file on disk is corrupt (nothing is written).
        """
        history = list(steps.history if isinstance(steps, PrivacyLedger) else steps)
        _validate_record(history, plan_hash=plan_hash, round=round, delta=delta)
        now = _now()
        new = [
            LedgerEntry(
                noise_multiplier=float(n),
                sample_rate=float(r),
                steps=int(s),
                delta=float(delta),
                plan_hash=plan_hash,
                run_label=str(run_label),
                round=int(round),
                recorded_at=now,
            )
            for n, r, s in history
        ]
        with self.transaction():
            data = self._read()
            data["entries"] = [*data["entries"], *new]
            data["delta"] = float(delta)
            self._write(data)
        _log.info(
            "privacy ledger %s: recorded %d step(s) of round %d (plan %s)",
            self.path,
            sum(e.steps for e in new),
            round,
            plan_hash,
        )
        return PrivacyLedger([e.history for e in data["entries"]])

    def reset(self, *, operator: str, reason: str, delta: float | None = None) -> Path | None:
        """An operator's explicit reset of this data set's budget to zero.

        The current file is archived as ``<id>.reset-<UTC time>.json`` (never deleted), an
        empty ledger that names the reset is written, a WARNING is logged and a JSON line
        (time, operator, reason, epsilon spent before, archive) is appended to
        ``resets.log``. A corrupt ledger can be reset too (epsilon before: null).

        Args:
            operator: who resets (required, non-empty).
            reason: why (required, non-empty).
            delta: delta for the epsilon logged as spent before; default the ledger's.

        Returns:
            The archived file, or None when there was no ledger file.

        Raises:
            LedgerError: no operator or reason.
        """
        problems = []
        if not str(operator).strip():
            problems.append("operator must name who resets the ledger")
        if not str(reason).strip():
            problems.append("reason must say why the ledger is reset")
        if problems:
            raise LedgerError("privacy ledger reset refused: " + "; ".join(problems))
        with self.transaction():
            epsilon: float | None
            try:
                data = self._read()
                used_delta = delta if delta is not None else data["delta"]
                epsilon = _epsilon(data["entries"], used_delta)
                count = len(data["entries"])
            except LedgerCorruptError:
                used_delta, epsilon, count = delta, None, None
            now = _now()
            archive = self._archive(now) if self.path.exists() else None
            event = {
                "time": now,
                "dataset_id": self.dataset_id,
                "operator": str(operator).strip(),
                "reason": str(reason).strip(),
                "epsilon_before": epsilon,
                "delta": used_delta,
                "entries_before": count,
                "archived_as": archive.name if archive else None,
            }
            empty = self._empty()
            empty["reset"] = event
            self._write(empty)
            self._append_reset_log(event)
        _log.warning(
            "privacy ledger of data set %s RESET by %s (reason: %s); epsilon spent before: %s "
            "(delta %s); old ledger archived as %s",
            self.dataset_id,
            event["operator"],
            event["reason"],
            "unknown" if epsilon is None else f"{epsilon:.4f}",
            used_delta,
            archive,
        )
        return archive

    # ----- internals ----------------------------------------------------------------------

    def _empty(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "dataset_id": self.dataset_id,
            "delta": None,
            "created": _now(),
            "reset": None,
            "entries": [],
        }

    def _archive(self, now: str) -> Path:
        """Copy the ledger to ``<id>.reset-<time>.json`` (readers keep seeing the old file
        until the empty one replaces it)."""
        stamp = now.replace("-", "").replace(":", "").replace(".", "")
        archive = self.folder / f"{self.dataset_id}.reset-{stamp}.json"
        try:
            raw = self.path.read_bytes()
        except OSError:  # unreadable: move it aside as it is (a rename loses nothing)
            try:
                os.replace(self.path, archive)
            except OSError as err:
                raise LedgerError(f"cannot archive privacy ledger {self.path}: {err}") from err
            return archive
        self._atomic_write(archive, raw)
        return archive

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise LedgerError(f"cannot open privacy ledger lock {self.lock_path}: {err}") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the only descriptor releases the lock

    def _read(self) -> dict[str, Any]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            archives = sorted(self.folder.glob(f"{self.dataset_id}.reset-*.json"))
            if archives:  # a reset writes an empty ledger: someone deleted it since
                raise LedgerCorruptError(
                    f"privacy ledger {self.path} is missing although it was reset before "
                    f"({archives[-1].name}); refusing to treat it as empty: restore it, or "
                    "reset it again as an operator decision (fedfusion site ledger reset)"
                ) from None
            return self._empty()
        except OSError as err:
            raise LedgerCorruptError(
                f"privacy ledger {self.path} cannot be read ({err}); the budget spent on this "
                "data set is unknown, so DP training is refused"
            ) from err
        try:
            return self._parse(json.loads(raw.decode("utf-8")))
        except (UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
            raise LedgerCorruptError(
                f"privacy ledger {self.path} is corrupt ({err}); the budget spent on this data "
                "set is unknown, so DP training is refused: restore the file from a backup, "
                "or reset it as an operator decision (fedfusion site ledger reset)"
            ) from err

    def _parse(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"not a {_FORMAT} file")
        if data.get("version") != _VERSION:
            raise ValueError(f"unsupported version {data.get('version')!r}")
        if data.get("dataset_id") != self.dataset_id:
            raise ValueError(f"it belongs to data set {data.get('dataset_id')!r}")
        entries = []
        for i, raw in enumerate(data["entries"]):
            entry = LedgerEntry(
                noise_multiplier=float(raw["noise_multiplier"]),
                sample_rate=float(raw["sample_rate"]),
                steps=int(raw["steps"]),
                delta=float(raw["delta"]),
                plan_hash=str(raw["plan_hash"]),
                run_label=str(raw.get("run_label", "")),
                round=int(raw["round"]),
                recorded_at=str(raw["recorded_at"]),
            )
            if not (
                math.isfinite(entry.noise_multiplier)
                and entry.noise_multiplier > 0
                and 0 < entry.sample_rate <= 1
                and entry.steps >= 1
            ):
                raise ValueError(f"entry {i} is out of range: {raw}")
            entries.append(entry)
        delta = data["delta"]
        return {
            **data,
            "delta": None if delta is None else float(delta),
            "entries": entries,
        }

    def _write(self, data: dict[str, Any]) -> None:
        payload = {**data, "entries": [asdict(e) for e in data["entries"]]}
        self._atomic_write(self.path, (json.dumps(payload, indent=1) + "\n").encode("utf-8"))

    def _atomic_write(self, path: Path, raw: bytes) -> None:
        try:
            atomic_write(path, raw)
        except OSError as err:
            raise LedgerError(f"cannot write privacy ledger file {path}: {err}") from err

    def _append_reset_log(self, event: dict[str, Any]) -> None:
        log_path = self.folder / RESETS_LOG
        try:
            append_line(log_path, json.dumps(event))
        except OSError as err:
            raise LedgerError(f"cannot append to {log_path}: {err}") from err


def _validate_record(
    history: list[tuple[float, float, int]], *, plan_hash: str, round: int, delta: float
) -> None:
    problems = []
    if not history:
        problems.append("no steps to record")
    for i, item in enumerate(history):
        try:
            noise, rate, steps = item
            ok = (
                math.isfinite(float(noise))
                and float(noise) > 0
                and 0 < float(rate) <= 1
                and int(steps) == steps
                and int(steps) >= 1
            )
        except (TypeError, ValueError):
            ok = False
        if not ok:
            problems.append(
                f"step entry {i} must be (noise_multiplier > 0, 0 < sample_rate <= 1, "
                f"steps >= 1), got {item!r}"
            )
    if not isinstance(plan_hash, str) or not plan_hash.strip():
        problems.append(f"plan_hash must be a non-empty string, got {plan_hash!r}")
    if isinstance(round, bool) or not isinstance(round, int) or round < 0:
        problems.append(f"round must be an int >= 0, got {round!r}")
    if not (isinstance(delta, int | float) and 0 < delta < 1):
        problems.append(f"delta must be in (0, 1), got {delta!r}")
    if problems:
        raise LedgerError("cannot record DP steps: " + "; ".join(problems))
