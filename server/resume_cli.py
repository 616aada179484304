"""``fedfusion server resume RUN``: continue a crashed deployment run with ``flwr run``.

The run's resume point (``resume.json``, :mod:`server.resume`) holds its whole run config; this
command submits the app again with that config plus ``resume-run`` so that the operator does
not retype anything::

    fedfusion server resume out/run-7 --connection hospital-net
    # flwr run . hospital-net --run-config 'task="rcc-grading" ... resume-run="out/run-7"'

A password in ``db-url`` is not kept in the resume point: give ``--run-config 'db-url=...'``
again for a PostgreSQL store with a password.
"""

from __future__ import annotations

import argparse
import json
import shlex
from collections.abc import Mapping
from pathlib import Path

from rich.console import Console

__all__ = ["register_resume", "resume_command", "run_config_text"]


def register_resume(commands: argparse._SubParsersAction) -> None:
    """Add ``resume`` to the ``fedfusion server`` command group."""
    p = commands.add_parser(
        "resume",
        help="continue a crashed run from its last round (submits it again with flwr run)",
        description=(
            "Read the run's resume point (resume.json and its tensors file, written after every "
            "round) and submit the app again with the same run config and resume-run set: the "
            "run continues at the next round and ends after the same number of rounds. An old "
            "pickled resume.pt is refused, never unpickled."
        ),
    )
    p.add_argument("run", help="the run's out-dir, a resume.json path, or its run-store id (--db)")
    p.add_argument("--db", default="", metavar="URL", help="run store, when RUN is a run id")
    p.add_argument("--app", default=".", help="the Flower app folder (default .)")
    p.add_argument("--connection", default="", help="the SuperLink connection for flwr run")
    p.add_argument(
        "--run-config",
        action="append",
        default=[],
        metavar="'k=v ...'",
        help="settings to add or replace (e.g. a db-url with its password, round-timeout)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
    p.set_defaults(func=run_resume, handler=run_resume)


def run_config_text(config: Mapping[str, object]) -> str:
    """``flwr run --run-config`` text for ``config`` (strings quoted, booleans lower-case)."""
    parts = []
    for key, value in config.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = repr(value)
        else:
            text = json.dumps(str(value))
        parts.append(f"{key}={text}")
    return " ".join(parts)


def resume_command(
    resume_run: str,
    *,
    db_url: str = "",
    app: str = ".",
    connection: str = "",
    extra: str = "",
    flwr: str = "flwr",
) -> list[str]:
    """The ``flwr run`` command that continues ``resume_run`` (starts nothing).

    Raises:
        ResumeError: when there is no readable resume point.
    """
    from server.resume import find_resume_point, load_resume_point

    path = find_resume_point(resume_run, db_url=db_url)
    point = load_resume_point(path)
    config = {k: v for k, v in point.config.items() if k != "resume-run"}
    if "***" in str(config.get("db-url", "")):
        config.pop("db-url")  # the password is not stored; pass it with --run-config
    config["resume-run"] = str(path.resolve())
    command = [flwr, "run", app]
    if connection:
        command.append(connection)
    text = run_config_text(config)
    if extra:
        text = f"{text} {extra}"  # later keys win in flwr's parser
    return [*command, "--run-config", text, "--stream"]


def run_resume(args: argparse.Namespace) -> int:
    from server.deploy_cli import _executable, exec_command
    from server.resume import ResumeError

    try:
        command = resume_command(
            args.run,
            db_url=args.db,
            app=args.app,
            connection=args.connection,
            extra=" ".join(args.run_config),
            flwr=_executable("flwr"),
        )
    except ResumeError as err:
        Console(stderr=True, highlight=False).print(
            f"error: {err}", style="bold red", markup=False, soft_wrap=True
        )
        return 2
    Console(highlight=False).print(shlex.join(command), markup=False, soft_wrap=True)
    if args.dry_run:
        return 0
    return exec_command([str(Path(command[0])), *command[1:]])
