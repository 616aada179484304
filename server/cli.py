"""``fedfusion dashboard``: serve the central aggregation dashboard over a run store.

``fedfusion dashboard --db URL [--host 127.0.0.1] [--port 8050] [--token TOKEN]``

It binds to 127.0.0.1 by default. Bound to any other address it requires a bearer token
(``--token`` or the ``FEDFUSION_DASHBOARD_TOKEN`` environment variable) and refuses to start
without one. The dashboard only reads the store.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from pathlib import Path

__all__ = [
    "DEFAULT_PORT",
    "TOKEN_ENV",
    "dashboard_hint",
    "is_loopback",
    "register",
    "run_dashboard",
    "simulation_db_url",
]

_log = logging.getLogger(__name__)

#: The environment variable read when ``--token`` is not given.
TOKEN_ENV = "FEDFUSION_DASHBOARD_TOKEN"
DEFAULT_PORT = 8050
#: ``--db`` value that turns the run store off in ``fedfusion simulate``.
NO_STORE = "none"


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``dashboard`` command to a root parser's subparsers.

    Args:
        subparsers: what ``ArgumentParser.add_subparsers()`` returned.

    Returns:
        The ``dashboard`` parser; it sets ``func`` and ``handler`` to :func:`run_dashboard`.
    """
    p = subparsers.add_parser(
        "dashboard",
        help="serve the central aggregation dashboard over a run store",
        description=(
            "Serve a read-only web dashboard of every run in a run store: learning curves "
            "globally and per site, ROC and confusion matrix, sites and their privacy budgets, "
            "checkpoints. Binds to 127.0.0.1 unless --host says otherwise; any other address "
            f"requires a bearer token (--token or ${TOKEN_ENV})."
        ),
    )
    p.add_argument(
        "--db",
        required=True,
        metavar="URL",
        help="the run store: a SQLite file path (e.g. out/runs.sqlite) or a SQLAlchemy URL "
        "(postgresql://user@host/db)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument(
        "--token",
        default=None,
        help=f"bearer token required from every client (default: ${TOKEN_ENV}); "
        "mandatory when --host is not a loopback address",
    )
    p.add_argument(
        "--refresh",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="how often open pages poll for new rounds (default 2)",
    )
    p.set_defaults(func=run_dashboard, handler=run_dashboard)
    return p


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def run_dashboard(args: argparse.Namespace) -> int:
    """Start the dashboard (blocks until interrupted); returns the exit code.

    Raises:
        ValueError: (``RunStoreError``) when the store cannot be opened; a bad port, refresh
            interval or a missing token for a non-loopback host.
    """
    import uvicorn

    from server.dashboard import create_app
    from server.store import RunStore

    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    problems = []
    if not 0 < args.port < 65536:
        problems.append(f"--port must be in 1..65535, got {args.port}")
    if args.refresh <= 0:
        problems.append(f"--refresh must be > 0 seconds, got {args.refresh}")
    if not is_loopback(args.host) and not token:
        problems.append(
            f"--host {args.host} is reachable from other machines: pass --token TOKEN or set "
            f"{TOKEN_ENV} (or bind --host 127.0.0.1)"
        )
    if token is not None and len(token) < 16:
        problems.append("the token must be at least 16 characters long")
    if problems:
        raise ValueError("dashboard: " + "; ".join(problems))
    store = RunStore(args.db, create=False)
    app = create_app(store, token=token, refresh_seconds=args.refresh)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"fedfusion dashboard on http://{shown}:{args.port}/ over {store.display_url}")
    if token:
        print(
            "clients need the token: header 'Authorization: Bearer TOKEN', or open a page once "
            "with ?token=TOKEN"
        )
    sys.stdout.flush()
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        store.close()
    return 0


def simulation_db_url(db: str | None, configured: object, out_dir: Path) -> str:
    """The run store ``fedfusion simulate`` writes to, as a URL ("" for none), opened once
    here so that a wrong URL fails before the simulation starts.

    Args:
        db: the ``--db`` option (None when not given; ``"none"`` turns the store off).
        configured: a ``db-url`` given with ``--run-config``, if any.
        out_dir: the ``--out`` folder; the default store is ``OUT/runs.sqlite``.

    Raises:
        RunStoreError: (a ValueError) when the store cannot be opened.
    """
    from server.store import RunStore, store_url

    chosen = db if db is not None else (str(configured) if configured else None)
    if chosen is None:
        url = store_url(out_dir / "runs.sqlite")
    elif chosen.strip().lower() in (NO_STORE, ""):
        return ""
    else:
        url = store_url(chosen)
    RunStore(url).close()
    return url


def dashboard_hint(db_url: str, *, prog: str = "fedfusion") -> str:
    """The command that opens the dashboard on the latest run of ``db_url``, for printing."""
    from server.store import RunStore, RunStoreError, redact_url

    target = redact_url(db_url)
    try:
        with RunStore(db_url, create=False) as store:
            run_id = store.latest_run_id()
            if store.sqlite_path is not None:
                target = _short_path(store.sqlite_path)
    except RunStoreError as err:
        _log.debug("no dashboard hint: %s", err)
        return ""
    page = f"http://127.0.0.1:{DEFAULT_PORT}/" + (f"runs/{run_id}" if run_id else "")
    return f"dashboard: {prog} dashboard --db {target}   (then open {page})"


def _short_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
