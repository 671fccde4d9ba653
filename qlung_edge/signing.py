"""Signed bundles: a device in a hospital runs only models its owner signed.

The manifest's hashes catch corruption, not tampering (anyone can rehash). `sign_bundle` signs the exact bytes of
manifest.json with an Ed25519 key (cryptography's implementation) into manifest.sig; since the manifest holds
every file's sha256, the signature covers the whole bundle. A daemon given trusted public keys refuses a bundle
that is unsigned, signed by another key, or changed after signing, at start and on SIGHUP, saying which.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

from qlung_edge.bundle import MANIFEST, SIGNATURE, BundleError


def _crypto():  # type: ignore[no-untyped-def]
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as err:
        raise BundleError("signed bundles need the cryptography package (pip install cryptography)") from err
    return serialization, ed25519


def key_id(public_raw: bytes) -> str:
    """A short name of a public key: the first 16 hex digits of the sha256 of its 32 raw bytes."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


def generate_keypair(private_path: Path) -> tuple[Path, str]:
    """A new Ed25519 key: PEM private key at `private_path` (0600), public key beside it (`.pub`)."""
    serialization, ed25519 = _crypto()
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key()
    public_pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if private_path.exists():
        raise BundleError("already exists: not overwriting a private key", path=private_path)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    public_path = private_path.with_name(private_path.name + ".pub")
    public_path.write_bytes(public_pem)
    return public_path, key_id(raw)


def _load_private(path: Path):  # type: ignore[no-untyped-def]
    serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as err:
        raise BundleError(f"not a readable unencrypted PEM private key ({err})", path=path) from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise BundleError("not an Ed25519 key (make one with `qlung-edge keygen`)", path=path)
    return key


def load_public_key(path: Path) -> tuple[object, str]:
    serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as err:
        raise BundleError(f"not a readable PEM public key ({err})", path=path) from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise BundleError("not an Ed25519 public key", path=path)
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return key, key_id(raw)


def sign_bundle(folder: Path, private_path: Path) -> str:
    """Sign the bundle's manifest; returns the signing key's id."""
    serialization, _ = _crypto()
    key = _load_private(private_path)
    manifest = (folder / MANIFEST).read_bytes()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    record = {"algorithm": "ed25519", "key_id": key_id(raw), "signature": base64.b64encode(key.sign(manifest)).decode()}
    tmp = folder / f".{SIGNATURE}.tmp"
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(folder / SIGNATURE)
    return str(record["key_id"])


def verify_signature(folder: Path, trusted: list[Path]) -> str:
    """The id of the trusted key that signed `folder`'s manifest; BundleError naming the reason otherwise."""
    from cryptography.exceptions import InvalidSignature

    keys = dict((kid, key) for key, kid in (load_public_key(p) for p in trusted))
    path = folder / SIGNATURE
    if not path.is_file():
        raise BundleError(f"unsigned: this device runs only bundles signed by {', '.join(sorted(keys))}", path=folder)
    try:
        record = json.loads(path.read_text())
        signature = base64.b64decode(record["signature"], validate=True)
        signer = str(record["key_id"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise BundleError(f"unreadable signature ({err})", path=path) from None
    if signer not in keys:
        raise BundleError(f"signed by key {signer}, which this device does not trust ({', '.join(sorted(keys))})",
                          path=path)  # fmt: skip
    try:
        keys[signer].verify(signature, (folder / MANIFEST).read_bytes())  # type: ignore[attr-defined]
    except InvalidSignature:
        raise BundleError(f"the manifest was changed after key {signer} signed it", path=folder / MANIFEST) from None
    return signer
