"""``fedfusion site ...`` commands (site side; no Flower, no server imports).

``fedfusion site check --manifest CSV --task TASK|--task-json FILE [--site NAME]
[--no-image-check]`` is the
site's preflight: it checks the manifest against the task and prints a summary per split, or
every problem and exit code 2. ``site keys`` and ``site run`` are in client/deploy_cli.py,
``site gradcam`` in client/gradcam.py, ``site ledger show|reset`` in client/ledger_cli.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from client.deploy_cli import add_site_commands
from client.gradcam import add_gradcam_command
from client.ledger_cli import add_ledger_commands
from client.manifest import Manifest, ManifestError, load_manifest
from models.tasks import list_tasks, resolve_task

__all__ = ["register", "run_check"]

#: exit code for a manifest (or task name) that does not pass the check.
EXIT_PROBLEMS = 2


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``site`` command group to a root parser's subparsers.

    Args:
        subparsers: what ``ArgumentParser.add_subparsers()`` returned.

    Returns:
        The ``site`` parser. Each leaf command sets ``func`` and ``handler`` (the same
        callable; ``args.func(args)`` returns the exit code).
    """
    site = subparsers.add_parser(
        "site",
        help=(
            "site-side commands: check a manifest, create keys, join a federation, "
            "show the privacy ledger"
        ),
        description="Commands a hospital runs on its own machine.",
    )
    commands = site.add_subparsers(dest="site_command", metavar="COMMAND", required=True)
    check = commands.add_parser(
        "check",
        help="validate a site manifest against a task (the site's preflight)",
        description=(
            "Check the manifest against the task and print rows, patients, labels and "
            "modalities per split; on problems list every one of them and exit with code 2."
        ),
    )
    check.add_argument("--manifest", required=True, type=Path, metavar="CSV", help="manifest CSV")
    check.add_argument("--task", metavar="TASK", help=f"task preset ({', '.join(list_tasks())})")
    check.add_argument(
        "--task-json",
        type=Path,
        metavar="FILE",
        help="an ad-hoc task's definition instead of a preset (task.json of `fedfusion simulate`)",
    )
    check.add_argument(
        "--site", default=None, metavar="NAME", help="keep only this site's rows (site column)"
    )
    check.add_argument(
        "--no-image-check",
        dest="check_images",
        action="store_false",
        help="only check that image files exist; do not open them",
    )
    check.add_argument(
        "--seed", type=int, default=0, help="seed of the automatic split (the run's seed)"
    )
    check.set_defaults(func=run_check, handler=run_check)
    add_site_commands(commands)  # `site keys`, `site run` (client/deploy_cli.py)
    add_gradcam_command(commands)  # `site gradcam` (client/gradcam.py)
    add_ledger_commands(commands)  # `site ledger show|reset` (client/ledger_cli.py)
    return site


def run_check(args: argparse.Namespace) -> int:
    """Run ``site check``; print to stdout and return the exit code (0 ok, 2 problems).

    Args:
        args: parsed arguments with ``manifest``, ``task``, ``site``, ``check_images`` and
            optionally ``seed`` (default 0).
    """
    console = Console(highlight=False)
    try:
        task = resolve_task(args.task, getattr(args, "task_json", None))
    except ValueError as err:
        console.print(f"error: {err}", markup=False, soft_wrap=True)
        return EXIT_PROBLEMS
    try:
        manifest = load_manifest(
            args.manifest,
            task,
            site=args.site,
            check_images=getattr(args, "check_images", True),
            seed=getattr(args, "seed", 0),
        )
    except ManifestError as err:
        _print_problems(console, err)
        return EXIT_PROBLEMS
    _print_summary(console, manifest)
    return 0


def _print_problems(console: Console, err: ManifestError) -> None:
    count = len(err.problems)
    console.print(
        f"{err.path}: {count} problem{'s' if count != 1 else ''} "
        "(rows as in a spreadsheet: header = row 1, first data row = row 2)",
        markup=False,
        soft_wrap=True,
        style="bold red",
    )
    for problem in err.problems:
        console.print(f"  - {problem}", markup=False, soft_wrap=True)


def _print_summary(console: Console, manifest: Manifest) -> None:
    task = manifest.task
    site = f", site {manifest.site}" if manifest.site else ""
    console.print(
        f"manifest OK: {manifest.path} (task {task.name}{site})",
        markup=False,
        soft_wrap=True,
        style="bold green",
    )
    table = Table(title="rows per split")
    table.add_column("split")
    for name in ("rows", "patients", *task.classes, *task.modalities):
        table.add_column(escape(name), justify="right")
    summary = manifest.summary()
    for split, info in summary.items():
        labels = info["labels"]
        modalities = info["modalities"]
        table.add_row(
            split,
            str(info["rows"]),
            str(info["patients"]),
            *(str(labels[c]) for c in task.classes),  # type: ignore[index]
            *(str(modalities[m]) for m in task.modalities),  # type: ignore[index]
        )
    console.print(table)
    images = f"; {', '.join(task.modalities)} count rows with that image" if task.modalities else ""
    console.print(
        f"columns {', '.join(task.classes)} count rows per label{images}",
        markup=False,
        soft_wrap=True,
    )
    for warning in manifest.warnings:
        console.print(f"warning: {warning}", markup=False, soft_wrap=True, style="yellow")
    for note in _notes(manifest, summary):
        console.print(f"note: {note}", markup=False, soft_wrap=True, style="yellow")


def _notes(manifest: Manifest, summary: dict[str, dict[str, object]]) -> list[str]:
    notes = []  # empty splits and single-class sites are in manifest.warnings
    for split, info in summary.items():
        for name, count in info["labels"].items():  # type: ignore[union-attr]
            if count == 0 and info["rows"]:
                notes.append(f"no {name!r} rows in {split}")
    for m, count in summary["train"]["modalities"].items():  # type: ignore[union-attr]
        if count == 0 and summary["train"]["rows"]:
            notes.append(f"modality {m!r} is missing in every train row")
    return notes
