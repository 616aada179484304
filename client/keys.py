"""The site's node-authentication key pair, in the formats Flower's node auth reads.

With ``flower-superlink --enable-supernode-auth`` the SuperLink only accepts SuperNodes whose
public key the coordinator registered (``flwr supernode register SITE.pub CONNECTION``). Flower
reads:

- the public key with ``cryptography``'s ``load_ssh_public_key``: one OpenSSH line
  ``ecdsa-sha2-nistp384 AAAA... comment``, on a NIST curve (P-256/P-384/P-521);
- the private key (``flower-supernode --auth-supernode-private-key SITE.key``) with
  ``load_ssh_private_key``: an unencrypted ``-----BEGIN OPENSSH PRIVATE KEY-----`` block.

The private key never leaves the site; the public key and its fingerprint go to the
coordinator (the fingerprint lets both sides confirm the file was not swapped on the way).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "SiteKeyError",
    "SiteKeyFiles",
    "create_site_keys",
    "fingerprint",
    "load_site_private_key",
]

_log = logging.getLogger(__name__)

_NIST_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class SiteKeyError(ValueError):
    """Bad key request (name, existing files) or a key file Flower's node auth cannot use."""


@dataclass(frozen=True)
class SiteKeyFiles:
    """What :func:`create_site_keys` wrote.

    Attributes:
        private_key: OpenSSH private key, mode 0600 (``--auth-supernode-private-key``).
        public_key: one-line OpenSSH public key (``flwr supernode register``).
        fingerprint: ``SHA256:...`` fingerprint of the public key, as ``ssh-keygen -lf`` shows.
    """

    private_key: Path
    public_key: Path
    fingerprint: str


def create_site_keys(
    out_dir: str | Path, *, name: str = "site", force: bool = False
) -> SiteKeyFiles:
    """Create an ECDSA P-384 key pair for SuperNode authentication.

    Args:
        out_dir: folder to write ``NAME.key`` and ``NAME.pub`` into (created).
        name: file stem and public-key comment, e.g. the site id. Default ``"site"``.
        force: overwrite existing files. Default False.

    Returns:
        The written :class:`SiteKeyFiles`.

    Raises:
        SiteKeyError: for a bad name or files that exist without ``force``.
    """
    problems = []
    if not _NAME.match(name):
        problems.append(
            f"name must be 1-64 letters, digits, '.', '_' or '-' (starting with a letter or "
            f"digit), got {name!r}"
        )
    out = Path(out_dir)
    private_path, public_path = out / f"{name}.key", out / f"{name}.pub"
    existing = [str(p) for p in (private_path, public_path) if p.exists()]
    if existing and not force:
        problems.append(f"refusing to overwrite {', '.join(existing)} (use --force to replace)")
    if problems:
        raise SiteKeyError("cannot create site keys: " + "; ".join(problems))

    key = ec.generate_private_key(ec.SECP384R1())
    private_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public_bytes = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    out.mkdir(parents=True, exist_ok=True)
    if private_path.exists():
        private_path.unlink()
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_bytes)
    os.chmod(private_path, 0o600)
    public_path.write_bytes(public_bytes + b" " + name.encode() + b"\n")
    os.chmod(public_path, 0o644)
    files = SiteKeyFiles(private_path, public_path, fingerprint(key.public_key()))
    _log.info("site key pair written: %s (%s)", public_path, files.fingerprint)
    return files


def load_site_private_key(path: str | Path) -> ec.EllipticCurvePrivateKey:
    """Load a SuperNode auth key the way ``flower-supernode`` does, with a clear error.

    Raises:
        SiteKeyError: when the file is missing, not an unencrypted OpenSSH private key, not
            ECDSA, or not on a NIST curve.
    """
    path = Path(path).expanduser()
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), None)
    except OSError as err:
        raise SiteKeyError(f"cannot read the site key {path}: {err.strerror}") from err
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise SiteKeyError(
            f"{path} is not an unencrypted OpenSSH private key ({err}); create one with "
            "`fedfusion site keys --out DIR`"
        ) from err
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, _NIST_CURVES):
        raise SiteKeyError(
            f"{path} must be an ECDSA key on a NIST curve (P-256, P-384, P-521), got "
            f"{type(key).__name__}"
        )
    return key


def fingerprint(public_key: ec.EllipticCurvePublicKey) -> str:
    """The OpenSSH ``SHA256:`` fingerprint of a public key (as ``ssh-keygen -lf`` prints)."""
    line = public_key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    blob = base64.b64decode(line.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"
