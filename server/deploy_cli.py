"""``fedfusion server ...``: certificates for the SuperLink and a safe ``flower-superlink`` start.

- ``fedfusion server certs --host NAME [--host NAME2 ...] --out DIR [--localhost] [--force]``
  creates ``ca.crt``, ``ca.key``, ``server.pem`` and ``server.key`` (see :mod:`server.certs`).
- ``fedfusion server start --certs DIR [--host 127.0.0.1] [--port 8000] [--database FILE]``
  runs ``flower-superlink`` with TLS, SuperNode authentication, a state database and runtime
  dependency installation off. ``--insecure`` (no TLS, hence no node auth) must be asked for
  and prints a warning; ``--dry-run`` only prints the command.

The command line is built by :func:`build_superlink_command` (pure, unit-tested); the CLI
prints it and then replaces itself with it (``exec``), so signals reach ``flower-superlink``
directly and its exit code is the command's exit code.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shlex
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from server.certs import (
    CA_CERT,
    SERVER_CERT,
    SERVER_KEY,
    CertificateError,
    create_superlink_certificates,
    verify_server_certificate,
)

__all__ = [
    "DEFAULT_DATABASE",
    "DEFAULT_PORT",
    "QUIET_FLOWER_ENV",
    "DeployConfigError",
    "IN_MEMORY_DATABASE",
    "TlsFiles",
    "build_superlink_command",
    "check_superlink_certificate",
    "exec_command",
    "register",
    "run_certs",
    "run_start",
    "runtime_host",
]

#: Flower's default SuperLink port (all APIs on one HTTPS port).
DEFAULT_PORT = 8000
#: Default SuperLink state database (``--database``), relative to the working directory.
DEFAULT_DATABASE = "superlink.db"
#: ``--database`` value that keeps the SuperLink state in memory (lost on restart).
IN_MEMORY_DATABASE = ":flwr-in-memory:"
#: Environment defaults for the Flower processes: no usage telemetry, no update check (a
#: hospital machine should not call out to flower.ai; set them yourself to override).
QUIET_FLOWER_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
#: Exit code for a refused start (bad flags, missing or broken certificates).
EXIT_REFUSED = 2

INSECURE_WARNING = (
    "WARNING: --insecure: TLS is OFF. Model weights, metrics and run commands cross the "
    "network unencrypted, and nothing proves to the sites that they talk to this SuperLink. "
    "SuperNode authentication is OFF too (Flower needs TLS for it): any machine that can "
    "reach this port can join the federation and receive the global model. Use this only "
    "on a closed test network, never with patient data."
)
NO_NODE_AUTH_WARNING = (
    "WARNING: --no-node-auth: SuperNode authentication is OFF. Any machine that can reach "
    "this port and trusts the CA can join the federation and receive the global model."
)


class DeployConfigError(ValueError):
    """Contradictory or incomplete SuperLink / SuperNode start options."""


@dataclass(frozen=True)
class TlsFiles:
    """The three files ``flower-superlink`` needs for TLS."""

    ca_cert: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def from_dir(cls, folder: str | Path) -> TlsFiles:
        """The files ``fedfusion server certs --out DIR`` wrote."""
        folder = Path(folder)
        return cls(folder / CA_CERT, folder / SERVER_CERT, folder / SERVER_KEY)


def build_superlink_command(
    *,
    tls: TlsFiles | None,
    insecure: bool = False,
    node_auth: bool = True,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    database: str | Path = DEFAULT_DATABASE,
    runtime_dependency_install: bool = False,
    executable: str = "flower-superlink",
) -> list[str]:
    """The ``flower-superlink`` command line for these settings (starts nothing).

    Args:
        tls: the CA certificate, server certificate and key; required unless ``insecure``.
        insecure: run without TLS (and so without node auth). Default False.
        node_auth: require registered SuperNode keys (``--enable-supernode-auth``).
            Default True; needs TLS.
        host: address to bind. Default ``127.0.0.1``; ``0.0.0.0`` to accept remote sites.
        port: the one HTTPS port of every SuperLink API. Default 8000.
        database: SQLite file that keeps runs and registered nodes across restarts; the
            string :data:`IN_MEMORY_DATABASE` keeps them in memory. Default ``superlink.db``.
        runtime_dependency_install: let the SuperLink ``uv sync`` each app's dependencies
            (needs the internet). Default False.
        executable: the program to run. Default ``flower-superlink``.

    Returns:
        The argument vector, program first.

    Raises:
        DeployConfigError: listing every contradiction.
    """
    problems = []
    if insecure and tls is not None:
        problems.append("--insecure turns TLS off: do not also give certificates")
    if not insecure and tls is None:
        problems.append(
            "TLS is on by default: give --certs DIR (from `fedfusion server certs`), or "
            "--insecure to run without TLS on a closed test network"
        )
    if insecure and node_auth:
        problems.append("node authentication needs TLS: --insecure requires --no-node-auth")
    if not 1 <= port <= 65535:
        problems.append(f"port must be in 1..65535, got {port}")
    if not str(database):
        problems.append("database must be a file path")
    if problems:
        raise DeployConfigError("cannot build the SuperLink command: " + "; ".join(problems))
    command = [executable, "--host", host, "--port", str(port)]
    if tls is not None:
        command += [
            "--ssl-ca-certfile",
            str(tls.ca_cert),
            "--ssl-certfile",
            str(tls.server_cert),
            "--ssl-keyfile",
            str(tls.server_key),
        ]
    else:
        command.append("--insecure")
    if node_auth:
        command.append("--enable-supernode-auth")
    command += ["--database", str(database)]
    if not runtime_dependency_install:
        command.append("--disable-runtime-dependency-installation")
    return command


def runtime_host(bind_host: str) -> str:
    """The address the SuperLink's own ServerApp runner dials for a given bind address.

    ``flower-superlink`` starts ``flower-superexec``, which connects back over HTTPS to the
    bind address with ``0.0.0.0`` / ``::`` replaced by ``127.0.0.1`` / ``::1``, and checks the
    server certificate against that address (``flwr.supercore.address.resolve_bind_address``).
    """
    host = bind_host.strip("[]")
    if _is_wildcard(host):
        return "::1" if ":" in host else "127.0.0.1"
    return host


def check_superlink_certificate(tls: TlsFiles, *, host: str, port: int) -> list[str]:
    """Every reason ``flower-superlink --host HOST`` would fail with these TLS files.

    Beyond :func:`~server.certs.verify_server_certificate` (files, CA signature, key, dates),
    the certificate must name :func:`runtime_host` of the bind address: otherwise the
    SuperLink starts but no run ever executes (its runner fails certificate verification).
    """
    problems = verify_server_certificate(
        ca_cert=tls.ca_cert, server_cert=tls.server_cert, server_key=tls.server_key
    )
    if problems:
        return problems
    dialled = runtime_host(host)
    if verify_server_certificate(ca_cert=tls.ca_cert, server_cert=tls.server_cert, host=dialled):
        problems.append(
            f"the SuperLink's own ServerApp runner connects to {dialled}:{port} and checks the "
            f"certificate, but {tls.server_cert} does not list {dialled}; re-create it with "
            f"`fedfusion server certs --host ... --host {dialled}` (keep the CA with --ca DIR)"
        )
    return problems


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``server`` command group (``certs``, ``start``) to a root parser's subparsers.

    Args:
        subparsers: what ``ArgumentParser.add_subparsers()`` returned.

    Returns:
        The ``server`` parser. Each leaf command sets ``func`` and ``handler`` (the same
        callable; ``args.handler(args)`` returns the exit code).
    """
    server = subparsers.add_parser(
        "server",
        help="coordinator commands: TLS certificates, start the SuperLink",
        description="Commands the coordinating centre runs on the SuperLink machine.",
    )
    commands = server.add_subparsers(dest="server_command", metavar="COMMAND", required=True)

    certs = commands.add_parser(
        "certs",
        help="create a CA and a SuperLink TLS certificate",
        description=(
            f"Create a private CA ({CA_CERT}, ca.key) and a SuperLink certificate signed by it "
            f"({SERVER_CERT}, {SERVER_KEY}) valid for every --host. Give each site {CA_CERT}; "
            "keep ca.key offline. Private keys are written with mode 0600. A SuperLink bound to "
            "0.0.0.0 also needs --host 127.0.0.1 (its own ServerApp runner connects there)."
        ),
    )
    certs.add_argument(
        "--host",
        dest="hosts",
        action="append",
        required=True,
        metavar="NAME",
        help="DNS name or IP address the sites use to reach the SuperLink (repeatable)",
    )
    certs.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    certs.add_argument(
        "--localhost",
        action="store_true",
        help="also make the certificate valid for localhost, 127.0.0.1 and ::1 (tests, demos)",
    )
    certs.add_argument(
        "--days", type=int, default=365, help="server certificate validity (default 365)"
    )
    certs.add_argument(
        "--ca", type=Path, metavar="DIR",
        help=f"sign with the existing CA in DIR ({CA_CERT}, ca.key) instead of creating one: "
        "renews the server certificate without giving sites a new CA certificate",
    )  # fmt: skip
    certs.add_argument("--force", action="store_true", help="overwrite existing files")
    certs.set_defaults(func=run_certs, handler=run_certs)

    start = commands.add_parser(
        "start",
        help="start the SuperLink (flower-superlink) with TLS and node authentication",
        description=(
            "Run flower-superlink with safe defaults: TLS on, SuperNode authentication on "
            "(register each site's public key with `flwr supernode register`), state kept in "
            "a database file, runtime dependency installation off. Prints the command first."
        ),
    )
    start.add_argument(
        "--certs",
        type=Path,
        metavar="DIR",
        help=f"folder with {CA_CERT}, {SERVER_CERT} and {SERVER_KEY} (`fedfusion server certs`)",
    )
    for flag, name in (
        ("--ssl-ca-certfile", "CA certificate"),
        ("--ssl-certfile", "server certificate"),
        ("--ssl-keyfile", "server private key"),
    ):
        start.add_argument(flag, type=Path, metavar="FILE", help=f"{name} (overrides --certs)")
    start.add_argument(
        "--insecure",
        action="store_true",
        help="run WITHOUT TLS and without node authentication (closed test networks only)",
    )
    start.add_argument(
        "--no-node-auth",
        dest="node_auth",
        action="store_false",
        help="accept any SuperNode (not recommended)",
    )
    start.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; 0.0.0.0 to accept remote sites)",
    )
    start.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})"
    )
    start.add_argument(
        "--database",
        default=DEFAULT_DATABASE,
        metavar="FILE",
        help=f"state database kept across restarts (default ./{DEFAULT_DATABASE})",
    )
    start.add_argument(
        "--allow-runtime-dependency-installation",
        dest="dependency_install",
        action="store_true",
        help="let the SuperLink install each app's dependencies with uv (needs internet)",
    )
    start.add_argument(
        "--dry-run", action="store_true", help="print the command and exit without running it"
    )
    start.set_defaults(func=run_start, handler=run_start)
    from server.resume_cli import register_resume

    register_resume(commands)
    return server


def run_certs(args: argparse.Namespace) -> int:
    """Run ``server certs``; return the exit code (0, or 2 when refused)."""
    console = Console(highlight=False)
    try:
        files = create_superlink_certificates(
            args.out,
            hosts=args.hosts,
            include_localhost=args.localhost,
            days=args.days,
            ca_dir=args.ca,
            force=args.force,
        )
    except CertificateError as err:
        _error(err)
        return EXIT_REFUSED
    console.print(f"certificates for {', '.join(files.hosts)}:", markup=False, soft_wrap=True)
    for path, use in (
        (files.ca_cert, "give to every site (--root-certificates) and to `flwr` connections"),
        (files.server_cert, "SuperLink --ssl-certfile"),
        (files.server_key, "SuperLink --ssl-keyfile (secret, mode 0600)"),
        (files.ca_key, "signs server certificates only: keep it offline (secret, mode 0600)"),
    ):
        console.print(f"  {path}  {use}", markup=False, soft_wrap=True)
    if "127.0.0.1" not in files.hosts:
        console.print(
            "note: 127.0.0.1 is not in the certificate: start the SuperLink with --host set to "
            "one of the names above (with --host 0.0.0.0 its own runner connects to 127.0.0.1 "
            "and `server start` refuses this certificate)",
            markup=False,
            soft_wrap=True,
        )
    console.print(
        f"next: fedfusion server start --certs {shlex.quote(str(args.out))}",
        markup=False,
        soft_wrap=True,
    )
    return 0


def run_start(args: argparse.Namespace) -> int:
    """Run ``server start``: check, print the command, then exec it (or return with --dry-run)."""
    err_console = Console(stderr=True, highlight=False)
    database = args.database
    if database != IN_MEMORY_DATABASE:
        database = str(Path(database).expanduser().absolute())
    try:
        tls = _tls_files(args)
        command = build_superlink_command(
            tls=tls,
            insecure=args.insecure,
            node_auth=args.node_auth and not args.insecure,
            host=args.host,
            port=args.port,
            database=database,
            runtime_dependency_install=args.dependency_install,
            executable=_executable("flower-superlink"),
        )
    except DeployConfigError as err:
        _error(err)
        return EXIT_REFUSED
    if tls is not None:
        problems = check_superlink_certificate(tls, host=args.host, port=args.port)
        if problems:
            _error("refusing to start the SuperLink: " + "; ".join(problems))
            return EXIT_REFUSED
    if args.insecure:
        err_console.print(INSECURE_WARNING, style="bold red", markup=False, soft_wrap=True)
    elif not args.node_auth:
        err_console.print(NO_NODE_AUTH_WARNING, style="bold red", markup=False, soft_wrap=True)
    if database == IN_MEMORY_DATABASE:
        err_console.print(
            "warning: in-memory state: registered SuperNodes and runs are lost when the "
            "SuperLink stops",
            style="yellow",
            markup=False,
            soft_wrap=True,
        )
    if args.dependency_install:
        err_console.print(
            "note: runtime dependency installation is on: the SuperLink will run `uv sync` "
            "for every app it receives",
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
    (``flower-superexec``, ``flwr-serverapp``) in the same environment.
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


def _tls_files(args: argparse.Namespace) -> TlsFiles | None:
    base = TlsFiles.from_dir(args.certs) if args.certs else None
    ca = args.ssl_ca_certfile or (base.ca_cert if base else None)
    cert = args.ssl_certfile or (base.server_cert if base else None)
    key = args.ssl_keyfile or (base.server_key if base else None)
    if ca is None and cert is None and key is None:
        return None
    if ca is None or cert is None or key is None:
        missing = [
            flag
            for flag, value in (
                ("--ssl-ca-certfile", ca),
                ("--ssl-certfile", cert),
                ("--ssl-keyfile", key),
            )
            if value is None
        ]
        raise DeployConfigError(f"TLS needs all three files; missing {', '.join(missing)}")
    return TlsFiles(Path(ca).absolute(), Path(cert).absolute(), Path(key).absolute())


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def _executable(name: str) -> str:
    """``name`` from this interpreter's environment if it is there, else from ``PATH``."""
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which(name) or name


def _error(err: object) -> None:
    Console(stderr=True, highlight=False).print(
        f"error: {err}", style="bold red", markup=False, soft_wrap=True
    )
