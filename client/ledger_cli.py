"""``fedfusion site ledger show|reset``: the site's privacy ledger (see :mod:`client.ledger`).

- ``fedfusion site ledger show --state-dir DIR --manifest CSV [--dp-delta D]`` prints the data
  set id, the ledger file, every recorded entry and the epsilon spent (at ``--dp-delta``, by
  default the delta of the latest record).
- ``fedfusion site ledger reset --state-dir DIR --manifest CSV --operator NAME --reason TEXT
  --yes [--dp-delta D]`` resets the data set's budget to zero: the old ledger is archived,
  never deleted, and the reset is logged in ``privacy-ledger/resets.log``. Without ``--yes``
  it only says what it would reset and exits with code 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from client.ledger import RESETS_LOG, LedgerError, SiteLedger, dataset_id

__all__ = ["add_ledger_commands", "run_ledger_reset", "run_ledger_show"]

#: Exit code for a refused command (unreadable ledger or manifest, missing --yes).
EXIT_REFUSED = 2


def add_ledger_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``ledger show`` and ``ledger reset`` to the ``site`` command group.

    Args:
        commands: the ``site`` parser's subparsers. Each leaf sets ``func`` and ``handler``
            (``args.func(args)`` returns the exit code).
    """
    ledger = commands.add_parser(
        "ledger",
        help="show or reset the site's privacy ledger (DP budget spent per data set)",
        description=(
            "The DP-SGD history of each of this site's data sets, kept in the site's state "
            "folder across runs (STATE_DIR/privacy-ledger/<manifest sha256>.json)."
        ),
    )
    actions = ledger.add_subparsers(dest="ledger_command", metavar="ACTION", required=True)
    show = actions.add_parser(
        "show",
        help="print a data set's recorded DP steps and the epsilon spent",
        description="Print the data set id, every recorded entry and the epsilon spent.",
    )
    _common(show)
    show.set_defaults(func=run_ledger_show, handler=run_ledger_show)
    reset = actions.add_parser(
        "reset",
        help="reset a data set's spent budget to zero (an operator's decision; archived, logged)",
        description=(
            "Archive the data set's ledger (never deleted), start an empty one and log who "
            "reset it and why in privacy-ledger/resets.log. The site's budget then starts "
            "from zero on this data set: only do this when the privacy argument allows it."
        ),
    )
    _common(reset)
    reset.add_argument("--operator", required=True, metavar="NAME", help="who resets the ledger")
    reset.add_argument("--reason", required=True, metavar="TEXT", help="why (kept in the log)")
    reset.add_argument("--yes", action="store_true", help="confirm the reset (required)")
    reset.set_defaults(func=run_ledger_reset, handler=run_ledger_reset)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir", required=True, type=Path, metavar="DIR", help="the site's state folder"
    )
    parser.add_argument(
        "--manifest",
        required=True,
        type=Path,
        metavar="CSV",
        help="the data set's manifest (its bytes' SHA-256 names the ledger)",
    )
    parser.add_argument(
        "--dp-delta",
        type=float,
        default=None,
        metavar="D",
        help="delta for the epsilon shown (default: the delta of the latest record)",
    )


def _print(console: Console, text: str, **style: str) -> None:
    console.print(text, markup=False, soft_wrap=True, highlight=False, **style)


def run_ledger_show(args: argparse.Namespace) -> int:
    """Run ``site ledger show``; return the exit code (0, or 2 for an unreadable ledger)."""
    console = Console(highlight=False)
    try:
        ledger = SiteLedger.open(args.state_dir, args.manifest)
        entries = ledger.entries
        delta = args.dp_delta if args.dp_delta is not None else ledger.delta
        spent = ledger.spent(delta) if entries else 0.0
    except LedgerError as err:
        _print(console, f"error: {err}", style="bold red")
        return EXIT_REFUSED
    _print(console, f"data set: {ledger.dataset_id}")
    _print(console, f"ledger: {ledger.path}{'' if ledger.path.exists() else ' (none yet)'}")
    if entries:
        table = Table(title="recorded DP-SGD steps")
        for column in ("recorded (UTC)", "plan", "run", "round", "noise", "sample rate", "steps"):
            table.add_column(column, justify="left" if column in ("plan", "run") else "right")
        for e in entries:
            table.add_row(
                e.recorded_at,
                e.plan_hash,
                e.run_label,
                str(e.round),
                f"{e.noise_multiplier:.4g}",
                f"{e.sample_rate:.4g}",
                str(e.steps),
            )
        console.print(table)
    total = sum(e.steps for e in entries)
    at = f" at delta {delta:g}" if delta is not None else ""
    _print(console, f"entries: {len(entries)}, steps: {total}")
    _print(console, f"epsilon spent: {spent:.4f}{at}", style="bold")
    return 0


def run_ledger_reset(args: argparse.Namespace) -> int:
    """Run ``site ledger reset``; return the exit code (0 reset, 2 refused)."""
    console = Console(highlight=False)
    try:
        ledger = SiteLedger(args.state_dir, dataset_id(args.manifest))
        try:
            before = f"{ledger.spent(args.dp_delta):.4f}"
        except LedgerError:  # corrupt: it can still be reset
            before = "unknown (unreadable ledger)"
        if not args.yes:
            _print(
                console,
                f"refusing to reset the privacy ledger of data set {ledger.dataset_id} "
                f"(epsilon spent {before}) without --yes",
                style="bold red",
            )
            return EXIT_REFUSED
        archive = ledger.reset(operator=args.operator, reason=args.reason, delta=args.dp_delta)
    except LedgerError as err:
        _print(console, f"error: {err}", style="bold red")
        return EXIT_REFUSED
    _print(console, f"privacy ledger of data set {ledger.dataset_id} reset by {args.operator}")
    _print(console, f"epsilon spent before the reset: {before}")
    _print(console, f"old ledger archived as: {archive or '(there was none)'}")
    _print(console, f"logged in: {ledger.folder / RESETS_LOG}")
    return 0
