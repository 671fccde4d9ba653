"""Signed bundles: keygen, export --sign, and a daemon that runs only what a trusted key signed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from firmware_bridge.sources import FileSource
from qlung_edge.bundle import BundleError, load_bundle, write_manifest
from qlung_edge.classifier import SHIPPED_BUNDLE
from qlung_edge.daemon import Daemon, DaemonConfig, check_setup
from qlung_edge.signing import generate_keypair, sign_bundle, verify_signature
from qlung_edge.sinks import CollectSink


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qlung_edge.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture()
def keys(tmp_path: Path) -> dict[str, Path]:
    done = _cli("keygen", str(tmp_path / "owner"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "owner").stat().st_mode & 0o777 == 0o600
    generate_keypair(tmp_path / "stranger")
    assert _cli("keygen", str(tmp_path / "owner")).returncode == 2, "an existing key is never overwritten"
    return {"owner": tmp_path / "owner", "owner.pub": tmp_path / "owner.pub", "stranger": tmp_path / "stranger",
            "stranger.pub": tmp_path / "stranger.pub"}  # fmt: skip


def test_signed_unsigned_foreign_and_tampered_bundles(keys: dict[str, Path], tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(SHIPPED_BUNDLE, bundle)
    with pytest.raises(BundleError, match="unsigned"):
        verify_signature(bundle, [keys["owner.pub"]])
    done = _cli("export", str(bundle), "--sign", str(keys["owner"]))
    assert done.returncode == 0 and "signed" in done.stdout, done.stderr
    owner = verify_signature(bundle, [keys["stranger.pub"], keys["owner.pub"]])
    assert owner in done.stdout
    with pytest.raises(BundleError, match="does not trust"):
        verify_signature(bundle, [keys["stranger.pub"]])
    # Tampering that passes the hashes: change the manifest and rehash it by hand, keep the signature.
    signature = (bundle / "manifest.sig").read_bytes()
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["quality_estimate"]["threshold"] = 0.99  # let poor audio through
    write_manifest(bundle, {k: v for k, v in manifest.items() if k not in ("files", "manifest_sha256")})
    load_bundle(bundle)  # the hashes agree
    (bundle / "manifest.sig").write_bytes(signature)
    with pytest.raises(BundleError, match="changed after key"):
        verify_signature(bundle, [keys["owner.pub"]])
    config = DaemonConfig(bundle=bundle, source=f"file:{tmp_path}/x.wav", trusted_keys=[keys["owner.pub"]])
    with pytest.raises(BundleError, match="changed after key"):
        check_setup(config)


def test_the_daemon_refuses_unsigned_bundles_at_start_and_on_reload(
    keys: dict[str, Path], shared_data: Path, tmp_path: Path
) -> None:
    signed, unsigned = tmp_path / "signed", tmp_path / "unsigned"
    shutil.copytree(SHIPPED_BUNDLE, signed)
    shutil.copytree(SHIPPED_BUNDLE, unsigned)
    sign_bundle(signed, keys["owner"])
    wav = shared_data / "sprsound" / "test_wav" / "40890405_3.3_0_p1_3652.wav"
    trusted = [keys["owner.pub"]]
    with pytest.raises(BundleError, match="unsigned"):
        Daemon(DaemonConfig(bundle=unsigned, source=f"file:{wav}", sinks=[], trusted_keys=trusted))
    done = _cli("daemon", "--bundle", str(unsigned), "--source", f"file:{wav}", "--trusted-key", str(trusted[0]))
    assert done.returncode == 2 and "unsigned" in done.stderr
    current = tmp_path / "current"
    current.symlink_to(signed)
    sink = CollectSink()
    config = DaemonConfig(bundle=current, source="file", sinks=[], trusted_keys=trusted)
    daemon = Daemon(config, source=FileSource(name="f", path=wav, realtime=True, speed=4), sinks=[sink])
    assert daemon.bundle.signer is not None
    runner = threading.Thread(target=daemon.run)
    runner.start()
    deadline = time.monotonic() + 30
    while not any(e["type"] == "window" for e in list(sink.events)) and time.monotonic() < deadline:
        time.sleep(0.05)
    current.unlink()
    current.symlink_to(unsigned)
    daemon.reload()
    runner.join(60)
    (reload,) = [e for e in sink.events if e["type"] == "reload"]
    assert not reload["ok"] and "unsigned" in reload["message"]
    assert sink.events[-1]["type"] == "stop" and daemon.bundle.path == current
