"""Site node-auth keys in the formats `flower-supernode` and `flwr supernode register` read."""

from __future__ import annotations

import argparse
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from flwr.cli.supernode.register import try_load_public_key
from flwr.supercore.primitives.asymmetric import public_key_to_bytes, uses_nist_ec_curve
from flwr.supernode.cli.flower_supernode import _try_setup_client_authentication

from client.keys import SiteKeyError, SiteKeyFiles, create_site_keys, load_site_private_key
from simulation.cli import main

BAD_NAMES = ["", "-site", "site a", "a/b", "x" * 65]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> SiteKeyFiles:
    return create_site_keys(tmp_path_factory.mktemp("keys"), name="center-a")


def test_files_modes_and_formats(keys: SiteKeyFiles) -> None:
    assert keys.private_key.name == "center-a.key" and keys.public_key.name == "center-a.pub"
    assert stat.S_IMODE(keys.private_key.stat().st_mode) == 0o600
    assert keys.private_key.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    line = keys.public_key.read_text().strip()
    kind, _blob, comment = line.split()
    assert kind == "ecdsa-sha2-nistp384" and comment == "center-a"
    assert keys.fingerprint.startswith("SHA256:")


def test_flower_supernode_loads_the_private_key(keys: SiteKeyFiles) -> None:
    """Exactly what `flower-supernode --auth-supernode-private-key` does with the file."""
    args = argparse.Namespace(
        auth_supernode_private_key=str(keys.private_key), auth_supernode_public_key=None
    )
    private, public = _try_setup_client_authentication(args)
    assert isinstance(private, ec.EllipticCurvePrivateKey) and uses_nist_ec_curve(public)


def test_flwr_register_reads_the_public_key_and_it_matches(keys: SiteKeyFiles) -> None:
    """`flwr supernode register` sends these bytes; the SuperNode presents the same key."""
    registered = try_load_public_key(keys.public_key)
    private = load_site_private_key(keys.private_key)
    assert registered == public_key_to_bytes(private.public_key())


def test_fingerprint_matches_ssh_keygen(keys: SiteKeyFiles) -> None:
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is not installed")
    out = subprocess.run(
        ["ssh-keygen", "-lf", str(keys.public_key)], capture_output=True, text=True, check=True
    ).stdout
    assert keys.fingerprint in out


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_load_rejects_what_flower_would_refuse(tmp_path: Path) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    pem = _write(
        tmp_path / "pem.key",
        ec_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    ed = _write(
        tmp_path / "ed.key",
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    with pytest.raises(SiteKeyError, match="not an unencrypted OpenSSH private key"):
        load_site_private_key(pem)
    with pytest.raises(SiteKeyError, match="NIST curve"):
        load_site_private_key(ed)
    with pytest.raises(SiteKeyError, match="cannot read"):
        load_site_private_key(tmp_path / "missing.key")


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(SiteKeyError, match="name must be"):
        create_site_keys(tmp_path, name=name)


def test_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    first = create_site_keys(tmp_path, name="b")
    with pytest.raises(SiteKeyError, match="refusing to overwrite"):
        create_site_keys(tmp_path, name="b")
    second = create_site_keys(tmp_path, name="b", force=True)
    assert second.fingerprint != first.fingerprint
    assert stat.S_IMODE(second.private_key.stat().st_mode) == 0o600


def test_cli_site_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["site", "keys", "--out", str(tmp_path), "--name", "center-b"]) == 0
    out = capsys.readouterr().out
    assert "center-b.pub" in out and "SHA256:" in out
    assert main(["site", "keys", "--out", str(tmp_path), "--name", "center-b"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
