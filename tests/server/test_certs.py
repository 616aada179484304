"""SuperLink certificates: signed by their CA, the right SANs, secret keys 0600, real TLS works."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from server.certs import (
    CertificateError,
    CertificateFiles,
    create_superlink_certificates,
    parse_host,
    verify_server_certificate,
)
from simulation.cli import main

HOST_CASES = [
    ("superlink.hospital.org", x509.DNSName("superlink.hospital.org")),
    ("SuperLink.Example.ORG", x509.DNSName("superlink.example.org")),
    ("*.example.org", x509.DNSName("*.example.org")),
    ("10.1.2.3", x509.IPAddress(ipaddress.ip_address("10.1.2.3"))),
    ("[fd00::1]", x509.IPAddress(ipaddress.ip_address("fd00::1"))),
]
BAD_HOSTS = ["", "https://superlink.org", "superlink.org:8000", "two words", "-bad.org", "a..b"]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertificateFiles:
    return create_superlink_certificates(
        tmp_path_factory.mktemp("certs"), hosts=["superlink.example.org", "10.1.2.3"]
    )


@pytest.fixture(scope="module")
def local_certs(tmp_path_factory: pytest.TempPathFactory) -> CertificateFiles:
    return create_superlink_certificates(
        tmp_path_factory.mktemp("local"), hosts=["127.0.0.1"], include_localhost=True
    )


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _sans(cert: x509.Certificate) -> set[x509.GeneralName]:
    return set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)


@pytest.mark.parametrize(("name", "expected"), HOST_CASES)
def test_parse_host(name: str, expected: x509.GeneralName) -> None:
    assert parse_host(name) == expected


@pytest.mark.parametrize("name", BAD_HOSTS)
def test_parse_host_rejects(name: str) -> None:
    with pytest.raises(CertificateError, match="expected a DNS name or an IP address"):
        parse_host(name)


def test_files_and_permissions(certs: CertificateFiles) -> None:
    assert [p.name for p in (certs.ca_cert, certs.ca_key, certs.server_cert, certs.server_key)] == [
        "ca.crt",
        "ca.key",
        "server.pem",
        "server.key",
    ]
    for secret in (certs.ca_key, certs.server_key):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in certs.server_key.read_bytes()
    assert b"BEGIN CERTIFICATE" in certs.server_cert.read_bytes()


def test_server_certificate_is_signed_by_the_ca_with_exact_sans(certs: CertificateFiles) -> None:
    ca, server = _load(certs.ca_cert), _load(certs.server_cert)
    server.verify_directly_issued_by(ca)
    assert _sans(server) == {
        x509.DNSName("superlink.example.org"),
        x509.IPAddress(ipaddress.ip_address("10.1.2.3")),
    }  # no loopback names unless asked
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    aki = server.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert (
        verify_server_certificate(
            ca_cert=certs.ca_cert,
            server_cert=certs.server_cert,
            server_key=certs.server_key,
            host="10.1.2.3",
        )
        == []
    )


def test_localhost_names_only_when_asked(local_certs: CertificateFiles) -> None:
    names = {str(n.value) for n in _sans(_load(local_certs.server_cert))}
    assert names == {"127.0.0.1", "localhost", "::1"}
    assert local_certs.hosts == ("127.0.0.1", "localhost", "::1")


def test_verify_reports_each_problem(
    certs: CertificateFiles, local_certs: CertificateFiles
) -> None:
    wrong_ca = verify_server_certificate(ca_cert=local_certs.ca_cert, server_cert=certs.server_cert)
    assert any("is not signed by the CA" in p for p in wrong_ca)
    wrong_key = verify_server_certificate(
        ca_cert=certs.ca_cert, server_cert=certs.server_cert, server_key=local_certs.server_key
    )
    assert any("is not the private key" in p for p in wrong_key)
    wrong_host = verify_server_certificate(
        ca_cert=certs.ca_cert, server_cert=certs.server_cert, host="localhost"
    )
    assert any("is not valid for 'localhost'" in p for p in wrong_host)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=400)
    expired = verify_server_certificate(
        ca_cert=certs.ca_cert, server_cert=certs.server_cert, now=later
    )
    assert len(expired) == 1 and "server.pem is valid from" in expired[0]


def test_refuses_to_overwrite_and_lists_every_problem(certs: CertificateFiles) -> None:
    folder = certs.ca_cert.parent
    before = certs.ca_key.read_bytes()
    with pytest.raises(CertificateError) as info:
        create_superlink_certificates(folder, hosts=["ok.org", "bad host"], days=0)
    message = str(info.value)
    assert "refusing to overwrite" in message and "--force" in message
    assert "'bad host'" in message and "days must be >= 1" in message
    assert certs.ca_key.read_bytes() == before
    with pytest.raises(CertificateError, match="at least one host"):
        create_superlink_certificates(folder / "empty", hosts=[])


def test_force_replaces(tmp_path: Path) -> None:
    first = create_superlink_certificates(tmp_path, hosts=["a.org"])
    old = first.ca_cert.read_bytes()
    second = create_superlink_certificates(tmp_path, hosts=["b.org"], force=True)
    assert second.ca_cert.read_bytes() != old
    assert stat.S_IMODE(second.server_key.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("connect_as", "ok"),
    [("localhost", True), ("127.0.0.1", True), ("superlink.example.org", False)],
)
def test_tls_handshake_with_python_ssl(
    local_certs: CertificateFiles, connect_as: str, ok: bool
) -> None:
    """A client that trusts only ca.crt accepts the server exactly for the names it lists."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(local_certs.server_cert, local_certs.server_key)
    client_ctx = ssl.create_default_context(cafile=str(local_certs.ca_cert))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            if ok:
                with client_ctx.wrap_socket(raw, server_hostname=connect_as) as tls:
                    assert tls.recv(2) == b"ok"
            else:
                with pytest.raises(ssl.SSLCertVerificationError):
                    client_ctx.wrap_socket(raw, server_hostname=connect_as)
    finally:
        thread.join(timeout=10)
        listener.close()


def test_cli_certs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "certs"
    argv = ["server", "certs", "--host", "superlink.org", "--host", "10.0.0.7", "--out", str(out)]
    assert main(argv) == 0
    assert "ca.crt" in capsys.readouterr().out
    names = {str(n.value) for n in _sans(_load(out / "server.pem"))}
    assert names == {"superlink.org", "10.0.0.7"}
    assert main(argv) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert main([*argv, "--force", "--localhost"]) == 0
    assert "localhost" in {str(n.value) for n in _sans(_load(out / "server.pem"))}


def test_renew_with_the_existing_ca(certs: CertificateFiles, tmp_path: Path) -> None:
    """A new server certificate from the old CA: sites keep their ca.crt."""
    renewed = create_superlink_certificates(
        tmp_path, hosts=["superlink.example.org"], ca_dir=certs.ca_cert.parent, days=30
    )
    assert renewed.ca_cert.read_bytes() == certs.ca_cert.read_bytes()
    assert renewed.ca_key == certs.ca_key and not (tmp_path / "ca.key").exists()
    assert (
        verify_server_certificate(
            ca_cert=certs.ca_cert, server_cert=renewed.server_cert, server_key=renewed.server_key
        )
        == []
    )
    assert _load(renewed.server_cert).serial_number != _load(certs.server_cert).serial_number
    folder = tmp_path / "in-place"
    folder.mkdir()
    for name in ("ca.crt", "ca.key"):
        (folder / name).write_bytes((certs.ca_cert.parent / name).read_bytes())
    in_place = create_superlink_certificates(folder, hosts=["superlink.example.org"], ca_dir=folder)
    assert in_place.ca_cert.read_bytes() == certs.ca_cert.read_bytes()
    with pytest.raises(CertificateError, match="server.pem, .*server.key"):
        create_superlink_certificates(folder, hosts=["superlink.example.org"], ca_dir=folder)
    assert (
        create_superlink_certificates(
            folder, hosts=["superlink.example.org"], ca_dir=folder, force=True
        ).ca_key
        == folder / "ca.key"
    )


def test_renew_refuses_a_ca_that_is_not_one(certs: CertificateFiles, tmp_path: Path) -> None:
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "ca.crt").write_bytes(certs.server_cert.read_bytes())
    (fake / "ca.key").write_bytes(certs.server_key.read_bytes())
    with pytest.raises(CertificateError, match="is not a CA certificate"):
        create_superlink_certificates(tmp_path / "out", hosts=["a.org"], ca_dir=fake)
    with pytest.raises(CertificateError, match="expected ca.crt and an unencrypted ca.key"):
        create_superlink_certificates(tmp_path / "out", hosts=["a.org"], ca_dir=tmp_path / "none")
