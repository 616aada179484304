"""TLS certificates for the SuperLink: a private CA and a server certificate signed by it.

Flower's SuperLink serves every API over HTTPS on one port and takes three files::

    flower-superlink --ssl-ca-certfile ca.crt --ssl-certfile server.pem --ssl-keyfile server.key

Each site verifies the SuperLink with the CA certificate only
(``flower-supernode --root-certificates ca.crt``); the same file goes into the coordinator's
``flwr`` connection (``root-certificates`` in ``$FLWR_HOME/config.toml``). The CA's private
key (``ca.key``) signs server certificates and nothing else: keep it offline.

Everything is done with the ``cryptography`` library (no ``openssl`` shell-outs). Keys are
ECDSA on NIST P-384; private keys are written with mode 0600 and existing files are never
overwritten unless ``force=True``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "SERVER_CERT",
    "SERVER_KEY",
    "CertificateError",
    "CertificateFiles",
    "create_superlink_certificates",
    "parse_host",
    "verify_server_certificate",
]

_log = logging.getLogger(__name__)

#: File names written by :func:`create_superlink_certificates` (Flower's own examples use them).
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"

_LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
_CURVE = ec.SECP384R1


class CertificateError(ValueError):
    """Bad certificate request (host names, paths, validity) or a certificate that fails checks."""


@dataclass(frozen=True)
class CertificateFiles:
    """Paths of the files :func:`create_superlink_certificates` wrote.

    Attributes:
        ca_cert: the CA certificate (``--ssl-ca-certfile`` / ``--root-certificates``).
        ca_key: the CA private key (keep offline; only signs server certificates).
        server_cert: the SuperLink certificate (``--ssl-certfile``).
        server_key: the SuperLink private key (``--ssl-keyfile``).
        hosts: the subject alternative names of the server certificate, in order.
    """

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    hosts: tuple[str, ...]


def parse_host(name: str) -> x509.GeneralName:
    """A SAN entry for ``name``: an IP address entry for IPs, else a DNS name entry.

    Args:
        name: a DNS name (``superlink.hospital.org``, ``*.example.org``) or an IPv4/IPv6
            address. Surrounding brackets of an IPv6 address are accepted.

    Raises:
        CertificateError: when ``name`` is neither (empty, contains a port, spaces, ...).
    """
    text = name.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        pass
    labels = text.rstrip(".").split(".")
    ok = (
        bool(text)
        and len(text) <= 253
        and all(
            0 < len(label) <= 63
            and (label == "*" and i == 0 or all(c.isalnum() or c == "-" for c in label))
            and not label.startswith("-")
            and not label.endswith("-")
            for i, label in enumerate(labels)
        )
    )
    if not ok or not text.isascii():
        raise CertificateError(
            f"expected a DNS name or an IP address (without port or scheme), got {name!r}"
        )
    return x509.DNSName(text.lower())


def _san_hosts(hosts: Iterable[str], *, include_localhost: bool) -> list[str]:
    names = [h.strip() for h in hosts]
    if include_localhost:
        names.extend(_LOCAL_NAMES)
    out: list[str] = []
    for name in names:
        if name not in out:
            out.append(name)
    return out


def create_superlink_certificates(
    out_dir: str | Path,
    *,
    hosts: Sequence[str],
    include_localhost: bool = False,
    days: int = 365,
    ca_days: int = 3650,
    ca_dir: str | Path | None = None,
    organization: str = "fedfusion",
    force: bool = False,
) -> CertificateFiles:
    """Create a CA and a SuperLink certificate signed by it; write them into ``out_dir``.

    Args:
        out_dir: folder for ``ca.crt``, ``ca.key``, ``server.pem``, ``server.key`` (created).
        hosts: every name or IP address the sites use to reach the SuperLink (at least one);
            each becomes a subject alternative name, the first one is also the common name.
        include_localhost: also add ``localhost``, ``127.0.0.1`` and ``::1``. Default False
            (a production certificate should not be valid for loopback names).
        days: validity of the server certificate in days. Default 365.
        ca_days: validity of a new CA certificate in days. Default 3650.
        ca_dir: sign with the existing CA in this folder (``ca.crt``, ``ca.key``) instead of
            creating one: renews the server certificate without sending sites a new
            ``ca.crt``. ``ca.crt`` is copied to ``out_dir``; ``ca.key`` is not. Default None.
        organization: the organisation name in the subjects. Default ``"fedfusion"``.
        force: overwrite existing files. Default False.

    Returns:
        The written :class:`CertificateFiles` (``ca_key`` is the key used, in ``ca_dir``
        when given).

    Raises:
        CertificateError: listing every problem (bad host names, bad validity, an unusable
            CA, files that exist without ``force``).
    """
    out = Path(out_dir)
    ca_key_path = Path(ca_dir) / CA_KEY if ca_dir is not None else out / CA_KEY
    files = CertificateFiles(
        ca_cert=out / CA_CERT,
        ca_key=ca_key_path,
        server_cert=out / SERVER_CERT,
        server_key=out / SERVER_KEY,
        hosts=tuple(_san_hosts(hosts, include_localhost=include_localhost)),
    )
    problems: list[str] = []
    if not hosts:
        problems.append("give at least one host name or IP address the sites will connect to")
    sans: list[x509.GeneralName] = []
    for host in files.hosts:
        try:
            sans.append(parse_host(host))
        except CertificateError as err:
            problems.append(str(err))
    if days < 1:
        problems.append(f"days must be >= 1, got {days}")
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None
    if ca_dir is not None:
        try:
            ca = _load_ca(Path(ca_dir))
        except CertificateError as err:
            problems.append(str(err))
    elif ca_days < days:
        problems.append(f"ca_days must be >= days ({days}), got {ca_days}")
    targets = [files.server_cert, files.server_key]
    if ca_dir is None:
        targets += [files.ca_cert, files.ca_key]
    elif files.ca_cert.resolve() != (Path(ca_dir) / CA_CERT).resolve():
        targets.append(files.ca_cert)
    existing = [str(p) for p in targets if p.exists()]
    if existing and not force:
        problems.append(f"refusing to overwrite {', '.join(existing)} (use --force to replace)")
    if problems:
        raise CertificateError("cannot create certificates: " + "; ".join(problems))

    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)  # tolerate clock skew
    new_ca = ca is None
    ca_cert, ca_key = ca or _new_ca(organization=organization, now=now, days=ca_days)
    server_key = ec.generate_private_key(_CURVE())
    server_cert = _server_certificate(
        server_key, ca_cert, ca_key, sans=sans, common_name=files.hosts[0][:64],
        organization=organization, now=now, days=days,
    )  # fmt: skip
    if ca_cert.not_valid_after_utc < server_cert.not_valid_after_utc:
        _log.warning(
            "the CA expires on %s, before the server certificate (%s)",
            f"{ca_cert.not_valid_after_utc:%Y-%m-%d}",
            f"{server_cert.not_valid_after_utc:%Y-%m-%d}",
        )

    out.mkdir(parents=True, exist_ok=True)
    if new_ca:
        _write_private_key(files.ca_key, ca_key)
    if CA_CERT in {p.name for p in targets}:
        _write_public(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_private_key(files.server_key, server_key)
    _write_public(files.server_cert, server_cert.public_bytes(serialization.Encoding.PEM))
    _log.info("SuperLink certificates for %s written to %s", ", ".join(files.hosts), out)
    return files


def _new_ca(
    *, organization: str, now: dt.datetime, days: int
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(_CURVE())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{organization} federation CA"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    return cert, key


def _load_ca(folder: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA in ``folder``, checked: readable, a CA, its key matches, still valid."""
    try:
        cert = x509.load_pem_x509_certificate((folder / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((folder / CA_KEY).read_bytes(), None)
    except (OSError, ValueError, TypeError) as err:
        raise CertificateError(
            f"expected {CA_CERT} and an unencrypted {CA_KEY} in {folder}: {err}"
        ) from err
    problems = []
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        problems.append(f"{folder / CA_CERT} is not a CA certificate")
    if not isinstance(key, ec.EllipticCurvePrivateKey) or _spki(key.public_key()) != _spki(
        cert.public_key()
    ):
        problems.append(f"{folder / CA_KEY} is not the key of {folder / CA_CERT}")
    if cert.not_valid_after_utc <= dt.datetime.now(dt.UTC):
        problems.append(f"{folder / CA_CERT} expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    if problems:
        raise CertificateError("; ".join(problems))
    return cert, key  # type: ignore[return-value]


def _server_certificate(
    key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    sans: list[x509.GeneralName],
    common_name: str,
    organization: str,
    now: dt.datetime,
    days: int,
) -> x509.Certificate:
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    """A CA signs certificates; an ECDSA server certificate only signs (the TLS handshake)."""
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _spki(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def verify_server_certificate(
    *,
    ca_cert: str | Path,
    server_cert: str | Path,
    server_key: str | Path | None = None,
    host: str | None = None,
    now: dt.datetime | None = None,
) -> list[str]:
    """Check a SuperLink certificate before starting a server with it.

    Checks that the files parse, that ``server_cert`` is signed by ``ca_cert``, that both are
    valid at ``now``, that ``server_key`` (when given) belongs to ``server_cert`` and that
    ``host`` (when given) is one of its subject alternative names.

    Args:
        ca_cert: PEM CA certificate.
        server_cert: PEM server certificate.
        server_key: PEM private key of the server certificate. Default None (not checked).
        host: a name or IP address the sites will use. Default None (not checked).
        now: the time to check validity at. Default: the current UTC time.

    Returns:
        Every problem found, as sentences; an empty list when the certificate is fine.
    """
    problems: list[str] = []
    now = now or dt.datetime.now(dt.UTC)
    try:
        ca = x509.load_pem_x509_certificate(Path(ca_cert).read_bytes())
        cert = x509.load_pem_x509_certificate(Path(server_cert).read_bytes())
    except (OSError, ValueError) as err:
        return [f"cannot read certificates {ca_cert}, {server_cert}: {err}"]
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        problems.append(f"{server_cert} is not signed by the CA in {ca_cert}")
    for path, c in ((ca_cert, ca), (server_cert, cert)):
        if not c.not_valid_before_utc <= now <= c.not_valid_after_utc:
            problems.append(
                f"{path} is valid from {c.not_valid_before_utc:%Y-%m-%d} to "
                f"{c.not_valid_after_utc:%Y-%m-%d}, not now ({now:%Y-%m-%d})"
            )
    if server_key is not None:
        try:
            key = serialization.load_pem_private_key(Path(server_key).read_bytes(), None)
        except (OSError, ValueError, TypeError) as err:
            problems.append(f"cannot read the private key {server_key}: {err}")
        else:
            if _spki(key.public_key()) != _spki(cert.public_key()):
                problems.append(f"{server_key} is not the private key of {server_cert}")
    if host is not None:
        try:
            wanted = parse_host(host)
        except CertificateError as err:
            problems.append(str(err))
        else:
            names = _sans(cert)
            if wanted not in names:
                problems.append(
                    f"{server_cert} is not valid for {host!r}; it names "
                    f"{', '.join(str(n.value) for n in names) or 'no hosts'}"
                )
    return problems


def _sans(cert: x509.Certificate) -> list[x509.GeneralName]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(ext.value)


def _write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """PEM (PKCS#8, unencrypted), created with mode 0600 before any byte is written."""
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_secret(path, data)


def _write_secret(path: Path, data: bytes) -> None:
    if path.exists():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)  # in case a umask or ACL widened it


def _write_public(path: Path, data: bytes) -> None:
    if path.exists():
        path.unlink()
    path.write_bytes(data)
    os.chmod(path, 0o644)
