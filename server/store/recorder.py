"""The ServerApp's side of the run store: record a run without slowing its rounds.

:class:`RunRecorder` opens the store and adds the run synchronously (a wrong ``db-url`` fails
the run before any training), then hands every later write (rounds, checkpoints, the final
status) to one background thread. A round only copies its record into a queue; a store that
is slow or briefly unreachable delays the dashboard, never the federation. Write errors are
logged and the run goes on.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.store.store import RoundLike, RunStore

__all__ = ["RunRecorder", "checkpoint_dir_for"]

_log = logging.getLogger(__name__)

_STOP = object()


@dataclass
class _RoundSnapshot:
    """A copy of a round record taken on the round's thread (the original may change)."""

    round: int
    global_metrics: dict[str, Any]
    sites: dict[str, dict[str, Any]]
    train: dict[str, dict[str, Any]]
    failures: list[Any]
    global_summary: dict[str, Any]
    seconds: float

    @classmethod
    def of(cls, record: RoundLike) -> _RoundSnapshot:
        return cls(
            round=int(record.round),
            global_metrics=dict(record.global_metrics),
            sites={k: dict(v) for k, v in record.sites.items()},
            train={k: dict(v) for k, v in record.train.items()},
            failures=list(record.failures),
            global_summary=dict(record.global_summary),
            seconds=float(record.seconds),
        )


def checkpoint_dir_for(store: RunStore, run_id: int, out_dir: str | Path = "") -> Path | None:
    """Where a run's per-round checkpoints go: ``OUT/checkpoints/run-ID`` when the run has an
    output folder, else ``checkpoints/run-ID`` beside a SQLite store; None otherwise (a
    database server and no output folder: checkpoints are not kept)."""
    if out_dir:
        return Path(out_dir).resolve() / "checkpoints" / f"run-{run_id}"
    if store.sqlite_path is not None:
        return store.sqlite_path.parent / "checkpoints" / f"run-{run_id}"
    return None


@dataclass
class RunRecorder:
    """Writes one run to a :class:`RunStore` from a background thread.

    Build it with :meth:`start`. Use :meth:`on_round_end` as the strategy's round callback,
    :meth:`save_checkpoint` after each round's aggregation, and :meth:`close` once at the end.

    Args:
        store: the open store.
        run_id: the run's id in it.
        checkpoint_dir: folder for per-round global models; None keeps none.
    """

    store: RunStore
    run_id: int
    checkpoint_dir: Path | None = None
    _queue: queue.Queue[Any] = field(default_factory=queue.Queue, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _closed: bool = field(default=False, init=False, repr=False)

    @classmethod
    def start(
        cls,
        db_url: str,
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
    ) -> RunRecorder:
        """Open the store at ``db_url`` and add a ``running`` run (arguments as for
        :meth:`RunStore.start_run`).

        Raises:
            RunStoreError: when the store cannot be opened.
        """
        store = RunStore(db_url)
        run_id = store.start_run(
            name=name,
            task=task,
            model=model,
            strategy=strategy,
            rounds_planned=rounds_planned,
            backbone=backbone,
            classes=classes,
            config=config,
            out_dir=out_dir,
        )
        recorder = cls(store, run_id, checkpoint_dir_for(store, run_id, out_dir))
        recorder._thread = threading.Thread(
            target=recorder._drain, name=f"fedfusion-store-run-{run_id}", daemon=True
        )
        recorder._thread.start()
        _log.info("run store: run %d in %s", run_id, store.display_url)
        return recorder

    @classmethod
    def resume(cls, db_url: str, run_id: int, *, from_round: int, out_dir: str = "") -> RunRecorder:
        """Open the store at ``db_url`` and continue run ``run_id`` after ``from_round``.

        Raises:
            RunStoreError: when the store cannot be opened or has no such run.
        """
        store = RunStore(db_url)
        try:
            store.resume_run(run_id, from_round=from_round)
        except Exception:
            store.close()
            raise
        recorder = cls(store, run_id, checkpoint_dir_for(store, run_id, out_dir))
        recorder._thread = threading.Thread(
            target=recorder._drain, name=f"fedfusion-store-run-{run_id}", daemon=True
        )
        recorder._thread.start()
        _log.info("run store: run %d resumed after round %d", run_id, from_round)
        return recorder

    # ---------------------------------------------------------------- called by the server

    def on_round_end(self, record: RoundLike) -> None:
        """Queue a finished round for writing (the strategy's ``on_round_end`` callback)."""
        snapshot = _RoundSnapshot.of(record)
        self._submit(f"round {snapshot.round}", self.store.record_round, self.run_id, snapshot)

    def save_checkpoint(self, server_round: int, state_dict: Mapping[str, Any]) -> None:
        """Queue saving the global model after ``server_round`` (round 0 is skipped).

        Args:
            server_round: the round just finished.
            state_dict: the aggregated weights (torch tensors), not changed afterwards.
        """
        if self.checkpoint_dir is None or server_round < 1:
            return
        self._submit(
            f"checkpoint {server_round}", self._write_checkpoint, server_round, dict(state_dict)
        )

    def close(
        self, *, status: str = "finished", error: str | None = None, timeout: float = 60.0
    ) -> None:
        """Queue the final status, then wait up to ``timeout`` seconds for every write."""
        if self._closed:
            return
        self._closed = True
        self._submit("final status", self.store.finish_run, self.run_id, status=status, error=error)
        self._queue.put(_STOP)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                _log.warning(
                    "run store: %d writes for run %d still pending after %.0f s; giving up on "
                    "them (the dashboard may show the run as running)",
                    self._queue.qsize(),
                    self.run_id,
                    timeout,
                )
                return
        self.store.close()

    # ---------------------------------------------------------------- worker

    def _submit(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        if self._thread is None:
            _call(what, self.run_id, fn, *args, **kwargs)
        else:
            self._queue.put((what, fn, args, kwargs))

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            what, fn, args, kwargs = item
            _call(what, self.run_id, fn, *args, **kwargs)

    def _write_checkpoint(self, server_round: int, state_dict: dict[str, Any]) -> None:
        import numpy as np
        import torch  # only the server needs it, not the dashboard

        assert self.checkpoint_dir is not None
        # A plain dict[str, Tensor]: it loads with torch.load(weights_only=True) anywhere
        # (the dashboard serves these files for download).
        plain: dict[str, torch.Tensor] = {}
        for key, value in state_dict.items():
            if isinstance(value, torch.Tensor):
                plain[str(key)] = value.detach()
            elif isinstance(value, np.ndarray):
                plain[str(key)] = torch.from_numpy(np.ascontiguousarray(value))
            else:
                raise TypeError(
                    f"checkpoint entry {key!r} is a {type(value).__name__}; expected a tensor"
                )
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = self.checkpoint_dir / f"round-{server_round:03d}.pt"
        partial = path.with_suffix(".pt.partial")
        torch.save(plain, partial)
        partial.replace(path)
        self.store.add_checkpoint(self.run_id, server_round, path)


def _call(what: str, run_id: int, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    try:
        fn(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - a store problem must not stop the federation
        _log.warning(
            "run store: could not write %s of run %d: %s: %s", what, run_id, type(err).__name__, err
        )
