"""Files that survive a crash: replaced atomically, appended durably (POSIX fsync)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["append_line", "atomic_write", "fsync_dir"]


def atomic_write(path: Path, raw: bytes) -> None:
    """Temporary file in the same folder, fsync, ``os.replace``, fsync of the folder: a crash
    leaves the old file or the new one, never a mix. Raises OSError."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # no secrets in it; an operator may read it
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        fsync_dir(path.parent)
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def append_line(path: Path, line: str) -> None:
    """Append ``line`` and a newline, flushed to disk. Raises OSError."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable (POSIX: fsync the directory)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
