"""`fedfusion server start`: the flower-superlink command line, checked against Flower's parser."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink

from server.certs import CertificateFiles, create_superlink_certificates
from server.deploy_cli import (
    INSECURE_WARNING,
    DeployConfigError,
    TlsFiles,
    build_superlink_command,
    check_superlink_certificate,
    runtime_host,
)
from simulation.cli import main

TLS = TlsFiles(Path("/c/ca.crt"), Path("/c/server.pem"), Path("/c/server.key"))

# (kwargs, message fragment) for contradictory settings.
REFUSED = [
    ({"tls": None}, "TLS is on by default"),
    ({"tls": TLS, "insecure": True, "node_auth": False}, "do not also give certificates"),
    ({"tls": None, "insecure": True}, "--insecure requires --no-node-auth"),
    ({"tls": TLS, "port": 0}, "port must be in 1..65535"),
]

# bind address -> the address flower-superlink's own runner dials (and the certificate must list)
RUNTIME_HOSTS = [
    ("0.0.0.0", "127.0.0.1"),
    ("::", "::1"),
    ("[::]", "::1"),
    ("127.0.0.1", "127.0.0.1"),
    ("10.20.0.5", "10.20.0.5"),
    ("superlink.example.org", "superlink.example.org"),
]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertificateFiles:
    return create_superlink_certificates(
        tmp_path_factory.mktemp("certs"), hosts=["127.0.0.1"], include_localhost=True
    )


def _flower_parses(command: list[str]):  # type: ignore[no-untyped-def]
    """Flower's own flower-superlink argument parser on our command line."""
    return _parse_args_run_superlink().parse_args(command[1:])


def test_default_is_tls_node_auth_database_no_dependency_install() -> None:
    command = build_superlink_command(tls=TLS, database="/state/superlink.db")
    assert command[0] == "flower-superlink"
    assert "--insecure" not in command
    args = _flower_parses(command)
    assert (args.ssl_ca_certfile, args.ssl_certfile, args.ssl_keyfile) == (
        "/c/ca.crt",
        "/c/server.pem",
        "/c/server.key",
    )
    assert args.enable_supernode_auth is True
    assert args.insecure is False
    assert args.database == "/state/superlink.db"
    assert args.runtime_dependency_install is False
    assert (args.host, args.port) == ("127.0.0.1", 8000)


def test_bind_port_and_dependency_install() -> None:
    command = build_superlink_command(
        tls=TLS, host="0.0.0.0", port=9443, runtime_dependency_install=True
    )
    args = _flower_parses(command)
    assert (args.host, args.port) == ("0.0.0.0", 9443)
    assert "--disable-runtime-dependency-installation" not in command


def test_insecure_must_be_explicit_and_drops_node_auth() -> None:
    command = build_superlink_command(tls=None, insecure=True, node_auth=False)
    args = _flower_parses(command)
    assert args.insecure is True and args.enable_supernode_auth is False
    assert not any(flag.startswith("--ssl") for flag in command)


@pytest.mark.parametrize(("kwargs", "fragment"), REFUSED)
def test_contradictions_are_refused(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(DeployConfigError, match=fragment):
        build_superlink_command(**kwargs)  # type: ignore[arg-type]


def test_cli_dry_run_prints_the_command(
    certs: CertificateFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "state.db"
    folder = str(certs.ca_cert.parent)
    argv = ["server", "start", "--certs", folder, "--database", str(db), "--dry-run"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    line = out.strip().splitlines()[-1]
    assert "flower-superlink" in line
    for fragment in (
        "--enable-supernode-auth",
        f"--database {db}",
        "--ssl-certfile",
        "--disable-runtime-dependency-installation",
        "--host 127.0.0.1",
    ):
        assert fragment in line
    assert "WARNING" not in err
    assert not db.exists()  # a dry run starts nothing


def test_cli_insecure_warns_loudly(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["server", "start", "--insecure", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert "--insecure" in out and "--enable-supernode-auth" not in out
    assert "TLS is OFF" in err and "SuperNode authentication is OFF" in err
    assert INSECURE_WARNING.split(":")[0] in err


def test_cli_refuses_without_certs_or_with_broken_ones(
    certs: CertificateFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["server", "start", "--dry-run"]) == 2
    assert "TLS is on by default" in capsys.readouterr().err
    other = create_superlink_certificates(tmp_path / "other", hosts=["127.0.0.1"])
    argv = [
        "server",
        "start",
        "--dry-run",
        "--ssl-ca-certfile",
        str(other.ca_cert),
        "--ssl-certfile",
        str(certs.server_cert),
        "--ssl-keyfile",
        str(certs.server_key),
    ]
    assert main(argv) == 2
    assert "is not signed by the CA" in capsys.readouterr().err
    assert main(["server", "start", "--dry-run", "--ssl-certfile", str(certs.server_cert)]) == 2
    assert "missing --ssl-ca-certfile, --ssl-keyfile" in capsys.readouterr().err


def _exec_script(child: str) -> list[str]:
    code = (
        "import sys; from server.deploy_cli import exec_command; "
        f"exec_command([sys.executable, '-c', {child!r}])"
    )
    return [sys.executable, "-c", code]


def test_exec_forwards_exit_code_and_signals() -> None:
    """The wrapper becomes the Flower process: same pid, its exit code, its signals."""
    done = subprocess.run(_exec_script("import sys; sys.exit(7)"), timeout=60)
    assert done.returncode == 7
    ready = "import os, sys, time; print(os.getpid(), flush=True); time.sleep(60)"
    proc = subprocess.Popen(_exec_script(ready), stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert int(proc.stdout.readline()) == proc.pid  # exec: no wrapper process in between
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLWR_")}
    no_telemetry = "import os, sys; sys.exit(int(os.environ['FLWR_TELEMETRY_ENABLED'] != '0'))"
    assert subprocess.run(_exec_script(no_telemetry), env=env, timeout=60).returncode == 0


@pytest.mark.parametrize(("bind", "dialled"), RUNTIME_HOSTS)
def test_runtime_host(bind: str, dialled: str) -> None:
    assert runtime_host(bind) == dialled


def test_certificate_must_name_the_runtime_address(
    certs: CertificateFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bound to 0.0.0.0, flower-superlink's runner dials 127.0.0.1 and checks the name."""
    remote = create_superlink_certificates(tmp_path, hosts=["superlink.example.org"])
    tls = TlsFiles(remote.ca_cert, remote.server_cert, remote.server_key)
    problems = check_superlink_certificate(tls, host="0.0.0.0", port=8000)
    assert len(problems) == 1 and "connects to 127.0.0.1:8000" in problems[0]
    assert check_superlink_certificate(tls, host="superlink.example.org", port=8000) == []
    local = TlsFiles(certs.ca_cert, certs.server_cert, certs.server_key)
    assert check_superlink_certificate(local, host="0.0.0.0", port=8000) == []
    argv = ["server", "start", "--certs", str(tmp_path), "--host", "0.0.0.0", "--dry-run"]
    assert main(argv) == 2
    assert "does not list 127.0.0.1" in capsys.readouterr().err
