"""``fedfusion site keys`` and ``fedfusion site run``: join a federation from a hospital.

- ``fedfusion site keys --out DIR [--name SITE] [--force]`` creates the site's node-auth key
  pair (``SITE.key`` stays here, ``SITE.pub`` goes to the coordinator; see :mod:`client.keys`).
- ``fedfusion site run --manifest CSV --site-id NAME --superlink HOST:PORT
  --root-certificates ca.crt --auth-key SITE.key [--port P] [--dp-epsilon E ...]`` checks the
  manifest, then runs ``flower-supernode`` with the site's manifest, id and privacy budget as
  node config (``data-path``, ``site-id``, ``dp-epsilon``, ``dp-delta``, ``dp-max-grad-norm``).

The command line is built by :func:`build_supernode_command` (pure, unit-tested); the CLI
prints it and then replaces itself with it (``exec``), so signals reach ``flower-supernode``
directly and its exit code is the command's exit code. Nothing here imports Flower.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from rich.console import Console

from client.keys import SiteKeyError, create_site_keys, load_site_private_key
from client.manifest import ManifestError, load_manifest
from models.tasks import list_tasks, resolve_task

__all__ = [
    "DEFAULT_RUNTIME_PORT",
    "QUIET_FLOWER_ENV",
    "SiteRunError",
    "add_site_commands",
    "build_node_config",
    "build_supernode_command",
    "exec_command",
    "format_node_config",
    "run_keys",
    "run_site",
]

#: Flower's default port of a SuperNode's local runtime API; each SuperNode on a host needs
#: its own.
DEFAULT_RUNTIME_PORT = 9094
#: Environment defaults for the Flower processes: no usage telemetry, no update check (a
#: hospital machine should not call out to flower.ai; set them yourself to override).
QUIET_FLOWER_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
#: Exit code for a refused start (bad options, invalid manifest, unusable key).
EXIT_REFUSED = 2

NodeValue = str | int | float | bool


class SiteRunError(ValueError):
    """Contradictory or incomplete ``site run`` options."""


def build_node_config(
    *,
    manifest: str | Path,
    site_id: str,
    dp_epsilon: float | None = None,
    dp_delta: float | None = None,
    dp_max_grad_norm: float | None = None,
    dp_noise_multiplier: float | None = None,
) -> dict[str, NodeValue]:
    """The site's node config: what the ClientApp reads from ``context.node_config``.

    Args:
        manifest: the site's manifest CSV (``data-path``; made absolute).
        site_id: the site's name (``site-id``).
        dp_epsilon: the site's total epsilon for the run (``dp-epsilon``); None = no local DP.
        dp_delta: the site's delta (``dp-delta``); only with ``dp_epsilon``.
        dp_max_grad_norm: per-sample clipping norm (``dp-max-grad-norm``); only with
            ``dp_epsilon``.
        dp_noise_multiplier: a fixed DP-SGD noise multiplier (``dp-noise-multiplier``)
            instead of one planned from the budget; only with ``dp_epsilon`` (the cap).

    Raises:
        SiteRunError: listing every bad value.
    """
    problems = []
    if not site_id.strip():
        problems.append("site id must not be empty")
    if dp_epsilon is None:
        given = [
            flag
            for flag, value in (
                ("--dp-delta", dp_delta),
                ("--dp-max-grad-norm", dp_max_grad_norm),
                ("--dp-noise-multiplier", dp_noise_multiplier),
            )
            if value is not None
        ]
        if given:
            problems.append(f"{' and '.join(given)} need --dp-epsilon (the site's budget)")
    else:
        if not (math.isfinite(dp_epsilon) and dp_epsilon > 0):
            problems.append(f"dp-epsilon must be > 0, got {dp_epsilon}")
        if dp_delta is not None and not 0 < dp_delta < 1:
            problems.append(f"dp-delta must be in (0, 1), got {dp_delta}")
        if dp_max_grad_norm is not None and not (
            math.isfinite(dp_max_grad_norm) and dp_max_grad_norm > 0
        ):
            problems.append(f"dp-max-grad-norm must be > 0, got {dp_max_grad_norm}")
        if dp_noise_multiplier is not None and not (
            math.isfinite(dp_noise_multiplier) and dp_noise_multiplier > 0
        ):
            problems.append(f"dp-noise-multiplier must be > 0, got {dp_noise_multiplier}")
    if problems:
        raise SiteRunError("invalid site settings: " + "; ".join(problems))
    config: dict[str, NodeValue] = {
        "data-path": str(Path(manifest).expanduser().absolute()),
        "site-id": site_id.strip(),
    }
    for key, value in (
        ("dp-epsilon", dp_epsilon),
        ("dp-delta", dp_delta),
        ("dp-max-grad-norm", dp_max_grad_norm),
        ("dp-noise-multiplier", dp_noise_multiplier),
    ):
        if value is not None:
            config[key] = float(value)
    return config


def format_node_config(config: Mapping[str, NodeValue]) -> str:
    """Render a node config as ``flower-supernode --node-config`` expects.

    Flower splits ``key=value`` pairs on spaces and parses each value as TOML, so strings are
    written as TOML basic strings (``"..."``) or, when they hold a double quote or a backslash
    (Windows paths), as literal strings (``'...'``, no escapes).

    Raises:
        SiteRunError: for a key with spaces or ``=``, or a string that fits neither form (a
            double quote or backslash together with a single quote, or a control character).
    """
    parts = []
    for key, value in config.items():
        if not key or any(c.isspace() or c == "=" for c in key):
            raise SiteRunError(f"node config keys must be single words, got {key!r}")
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            if isinstance(value, float) and not math.isfinite(value):
                raise SiteRunError(f"node config {key} must be finite, got {value}")
            text = repr(value)
        else:
            value = str(value)
            if not any(c in value for c in '"\\') and value.isprintable():
                text = f'"{value}"'
            elif "'" not in value and value.isprintable():
                text = f"'{value}'"
            else:
                raise SiteRunError(
                    f"node config {key} cannot hold a single quote together with a double "
                    f"quote or backslash, nor control characters: {value!r}; rename the file "
                    "or folder"
                )
        parts.append(f"{key}={text}")
    return " ".join(parts)


def build_supernode_command(
    *,
    superlink: str,
    node_config: Mapping[str, NodeValue],
    root_certificates: str | Path | None,
    auth_key: str | Path | None,
    insecure: bool = False,
    port: int = DEFAULT_RUNTIME_PORT,
    max_retries: int | None = None,
    executable: str = "flower-supernode",
) -> list[str]:
    """The ``flower-supernode`` command line for a site (starts nothing).

    Args:
        superlink: the SuperLink as ``HOST:PORT`` (a name the server certificate lists).
        node_config: from :func:`build_node_config`.
        root_certificates: the federation's CA certificate; required unless ``insecure``.
        auth_key: the site's private key (``fedfusion site keys``); None = no node auth.
        insecure: connect without TLS (and so without node auth). Default False.
        port: this SuperNode's local runtime API port; several SuperNodes on one host need
            different ones. Default 9094.
        max_retries: give up after this many failed connection attempts. Default None
            (retry forever).
        executable: the program to run. Default ``flower-supernode``.

    Raises:
        SiteRunError: listing every contradiction.
    """
    problems = []
    host, sep, link_port = superlink.rpartition(":")
    if not sep or not host or "://" in superlink or not link_port.isdigit():
        problems.append(f"--superlink must be HOST:PORT without a scheme, got {superlink!r}")
    if insecure and root_certificates is not None:
        problems.append("--insecure turns TLS off: do not also give --root-certificates")
    if not insecure and root_certificates is None:
        problems.append(
            "TLS is on by default: give --root-certificates ca.crt (from the coordinator), "
            "or --insecure for a closed test network"
        )
    if insecure and auth_key is not None:
        problems.append("node authentication needs TLS: drop --auth-key or --insecure")
    if not 1 <= port <= 65535:
        problems.append(f"port must be in 1..65535, got {port}")
    if max_retries is not None and max_retries < 0:
        problems.append(f"max-retries must be >= 0, got {max_retries}")
    if problems:
        raise SiteRunError("cannot build the SuperNode command: " + "; ".join(problems))
    command = [executable, "--superlink", superlink]
    if insecure:
        command.append("--insecure")
    else:
        command += ["--root-certificates", str(root_certificates)]
    if auth_key is not None:
        command += ["--auth-supernode-private-key", str(auth_key)]
    command += ["--port", str(port)]
    if max_retries is not None:
        command += ["--max-retries", str(max_retries)]
    command += ["--node-config", format_node_config(node_config)]
    return command


def add_site_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``keys`` and ``run`` to the ``site`` group's subparsers (see :mod:`client.cli`)."""
    keys = commands.add_parser(
        "keys",
        help="create the site's node-authentication key pair",
        description=(
            "Create an ECDSA P-384 key pair: NAME.key (private, mode 0600, stays on this "
            "machine) and NAME.pub (send it to the coordinator, who registers it with "
            "`flwr supernode register NAME.pub CONNECTION`)."
        ),
    )
    keys.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    keys.add_argument("--name", default="site", help="file name stem and key comment (site id)")
    keys.add_argument("--force", action="store_true", help="overwrite existing files")
    keys.set_defaults(func=run_keys, handler=run_keys)

    run = commands.add_parser(
        "run",
        help="check the manifest, then connect this site to the SuperLink (flower-supernode)",
        description=(
            "Validate the manifest, then run flower-supernode with TLS and node "
            "authentication, passing the manifest, site id and the site's privacy budget as "
            "node config. The site's budget is enforced here; the server cannot loosen it."
        ),
    )
    run.add_argument("--manifest", required=True, type=Path, metavar="CSV", help="manifest CSV")
    run.add_argument("--site-id", required=True, metavar="NAME", help="this site's name")
    run.add_argument(
        "--task",
        default=None,
        metavar="TASK",
        help=f"task the manifest is checked against ({', '.join(list_tasks())}; "
        "default rcc-grading)",
    )
    run.add_argument(
        "--task-json",
        type=Path,
        metavar="FILE",
        help="an ad-hoc task's definition (the task.json the coordinator sends) instead of --task",
    )
    run.add_argument("--superlink", required=True, metavar="HOST:PORT", help="SuperLink address")
    run.add_argument(
        "--root-certificates",
        type=Path,
        metavar="CA_CERT",
        help="the federation's CA certificate (ca.crt from the coordinator)",
    )
    run.add_argument(
        "--auth-key",
        type=Path,
        metavar="KEY",
        help="this site's private key (`fedfusion site keys`)",
    )
    run.add_argument(
        "--insecure",
        action="store_true",
        help="connect WITHOUT TLS and node authentication (closed test networks only)",
    )
    run.add_argument(
        "--port",
        type=int,
        default=DEFAULT_RUNTIME_PORT,
        help=f"local runtime API port (default {DEFAULT_RUNTIME_PORT}; one per SuperNode)",
    )
    run.add_argument("--dp-epsilon", type=float, metavar="E", help="the site's total epsilon")
    run.add_argument("--dp-delta", type=float, metavar="D", help="the site's delta")
    run.add_argument(
        "--dp-max-grad-norm", type=float, metavar="C", help="per-sample gradient clipping norm"
    )
    run.add_argument(
        "--dp-noise-multiplier",
        type=float,
        metavar="S",
        help="fixed DP-SGD noise multiplier (default: planned so that --dp-epsilon lasts the run)",
    )
    run.add_argument(
        "--max-retries", type=int, metavar="N", help="give up after N failed connection attempts"
    )
    run.add_argument(
        "--no-image-check",
        dest="check_images",
        action="store_false",
        help="only check that image files exist; do not open them",
    )
    run.add_argument(
        "--dry-run", action="store_true", help="print the command and exit without running it"
    )
    run.set_defaults(func=run_site, handler=run_site)


def run_keys(args: argparse.Namespace) -> int:
    """Run ``site keys``; return the exit code (0, or 2 when refused)."""
    try:
        files = create_site_keys(args.out, name=args.name, force=args.force)
    except SiteKeyError as err:
        _error(err)
        return EXIT_REFUSED
    console = Console(highlight=False)
    console.print(
        f"private key: {files.private_key}  (mode 0600; never leaves this site)",
        markup=False,
        soft_wrap=True,
    )
    console.print(
        f"public key:  {files.public_key}  (send to the coordinator)", markup=False, soft_wrap=True
    )
    console.print(
        f"fingerprint: {files.fingerprint}  (read it to the coordinator by phone "
        "or another channel; they check it before registering)",
        markup=False,
        soft_wrap=True,
    )
    return 0


def run_site(args: argparse.Namespace) -> int:
    """Run ``site run``: validate, print the command, then exec it (or return with --dry-run)."""
    err_console = Console(stderr=True, highlight=False)
    try:
        node_config = build_node_config(
            manifest=args.manifest,
            site_id=args.site_id,
            dp_epsilon=args.dp_epsilon,
            dp_delta=args.dp_delta,
            dp_max_grad_norm=args.dp_max_grad_norm,
            dp_noise_multiplier=args.dp_noise_multiplier,
        )
        root = args.root_certificates.expanduser().absolute() if args.root_certificates else None
        key = args.auth_key.expanduser().absolute() if args.auth_key else None
        command = build_supernode_command(
            superlink=args.superlink,
            node_config=node_config,
            root_certificates=root,
            auth_key=key,
            insecure=args.insecure,
            port=args.port,
            max_retries=args.max_retries,
            executable=_executable("flower-supernode"),
        )
        task_json = getattr(args, "task_json", None)
        task = resolve_task(args.task or (None if task_json else "rcc-grading"), task_json)
    except ValueError as err:
        _error(err)
        return EXIT_REFUSED
    problems = []
    if root is not None and not root.is_file():
        problems.append(f"--root-certificates {root} is not a file")
    if key is not None:
        try:
            load_site_private_key(key)
        except SiteKeyError as err:
            problems.append(str(err))
    try:
        load_manifest(args.manifest, task, site=args.site_id, check_images=args.check_images)
    except ManifestError as err:
        count = len(err.problems)
        problems.append(
            f"the manifest {err.path} is not valid for task {task.name} "
            f"({count} problem{'s' if count != 1 else ''}; run `fedfusion site check "
            f"--manifest {shlex.quote(str(args.manifest))} {_task_flag(args, task.name)}` "
            "for the list): "
            + "; ".join(str(p) for p in err.problems[:5])
            + (" ..." if count > 5 else "")
        )
    if problems:
        _error("refusing to start the site: " + "; ".join(problems))
        return EXIT_REFUSED
    if args.insecure:
        err_console.print(
            "WARNING: --insecure: TLS and node authentication are OFF. Model weights travel "
            "unencrypted and this site cannot tell the real SuperLink from an impostor. "
            "Closed test networks only, never with patient data.",
            style="bold red",
            markup=False,
            soft_wrap=True,
        )
    elif key is None:
        err_console.print(
            "warning: no --auth-key: a SuperLink with node authentication (the default) will "
            "refuse this site",
            style="yellow",
            markup=False,
            soft_wrap=True,
        )
    if args.dp_epsilon is None:
        err_console.print(
            "note: no --dp-epsilon: this site trains without local differential privacy; its "
            "weight updates are sent without noise",
            style="yellow",
            markup=False,
            soft_wrap=True,
        )
    Console(highlight=False).print(shlex.join(command), markup=False, soft_wrap=True)
    if args.dry_run:
        return 0
    return exec_command(command)


def exec_command(command: Sequence[str]) -> int:
    """Run ``command`` in place of this process (POSIX ``exec``), else as a child.

    With ``exec`` the program keeps this process id, so signals sent to ``fedfusion`` reach
    it directly and its exit code becomes the command's exit code. The interpreter's own
    ``bin`` folder goes first on ``PATH`` so that Flower finds the helpers it launches
    (``flower-superexec``, ``flwr-clientapp``) in the same environment.
    Flower's usage telemetry and update check (outbound connections to flower.ai) are turned
    off unless the environment already sets ``FLWR_TELEMETRY_ENABLED`` /
    ``FLWR_DISABLE_UPDATE_CHECK``.

    Returns:
        The child's exit code (only where ``exec`` is not available; otherwise it does not
        return).
    """
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    for key, value in QUIET_FLOWER_ENV.items():
        env.setdefault(key, value)
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "posix":
        os.execvpe(command[0], list(command), env)
    import subprocess

    process = subprocess.Popen(list(command), env=env)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        return process.wait()


def _executable(name: str) -> str:
    """``name`` from this interpreter's environment if it is there, else from ``PATH``."""
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which(name) or name


def _task_flag(args: argparse.Namespace, name: str) -> str:
    task_json = getattr(args, "task_json", None)
    return f"--task-json {shlex.quote(str(task_json))}" if task_json else f"--task {name}"


def _error(err: object) -> None:
    Console(stderr=True, highlight=False).print(
        f"error: {err}", style="bold red", markup=False, soft_wrap=True
    )
