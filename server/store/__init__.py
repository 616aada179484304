"""The run store: SQLAlchemy tables the ServerApp writes and the dashboard reads.

- :class:`RunStore` opens a SQLite file or any SQLAlchemy URL (PostgreSQL via psycopg) and
  reads/writes runs, rounds, per-site results, site status, privacy spend, audit events and
  checkpoints.
- :class:`RunRecorder` is the ServerApp's writer: the run is added at start, rounds,
  checkpoints and the final status are written from a background thread.

Importing this package does not import torch or Flower (the dashboard uses it).
"""

from __future__ import annotations

from server.store.recorder import RunRecorder, checkpoint_dir_for
from server.store.schema import RUN_STATUSES, SCHEMA_VERSION
from server.store.store import (
    PRIVACY_KEYS,
    RoundLike,
    RunStore,
    RunStoreError,
    redact_url,
    store_url,
)

__all__ = [
    "PRIVACY_KEYS",
    "RUN_STATUSES",
    "SCHEMA_VERSION",
    "RoundLike",
    "RunRecorder",
    "RunStore",
    "RunStoreError",
    "checkpoint_dir_for",
    "redact_url",
    "store_url",
]
