"""The hash of the fedfusion code a plan is made for (recorded in the plan's ``app-hash``).

SHA-256 over the library's Python files (package-relative path and bytes, sorted), so a plan
names exactly which code it was written for and a changed app is a different plan. Flower 1.42
verifies signed apps only through Flower Hub (``--trust-entities``), which offline hospitals
cannot reach; docs/privacy-and-security.md says what this hash does and does not protect.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

__all__ = ["APP_PACKAGES", "app_hash"]

#: The packages the Flower app bundles (pyproject's setuptools include list).
APP_PACKAGES = ("models", "client", "server", "strategies", "simulation")


@functools.cache
def app_hash(root: Path | None = None) -> str:
    """SHA-256 (hex) of the app's ``*.py`` files under ``root`` (default: this checkout)."""
    root = root or Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for package in APP_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            relative = path.relative_to(root).as_posix()
            digest.update(relative.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()
