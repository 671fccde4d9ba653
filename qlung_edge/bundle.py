"""The model bundle: a folder the device verifies before it runs anything.

`manifest.json` says what the model expects and produces and holds the sha256 of every other file; the
manifest also carries a hash of its own content, so an edited threshold is caught like an altered model.
torch-free: the device reads bundles with the standard library and numpy.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qlung_edge.errors import QLungError
from qlung_edge.quality import QualityConfig

BUNDLE_FORMAT = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
"""Ed25519 signature of manifest.json (qlung_edge/signing.py); not listed in the manifest it signs."""
MODEL_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
ENGINE_FILE = "model.plan"
FRONTEND_FILE = "frontend.onnx"
"""The front end alone (audio of any length in, its log-mel frames out; the dense DFT as a MatMul): the daemon
computes each frame once."""
FRONTEND_FFT_FILE = "frontend.fft.onnx"
"""The same front end with a real FFT in place of the Conv1d DFT (ONNX Runtime only)."""
NETWORK_FILE = "network.onnx"
"""The model after the front end: a window's frames in, the same outputs as model.onnx."""
NETWORK_INT8_FILE = "network.int8.onnx"
"""network.onnx quantized (every convolution, QDQ): what an INT8 TensorRT engine is built from."""
CHECK_FILE = "check_inputs.npz"
"""Windows and the checkpoint's outputs for them: what `export --trt --check` compares an engine against."""


class BundleError(QLungError):
    """A bundle that must not run: missing, altered or of another format."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _content_hash(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_manifest(folder: str | Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Hash every file in `folder` into the manifest and write it; returns what was written."""
    folder = Path(folder)
    files = {
        p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name not in (MANIFEST, SIGNATURE) and not p.name.startswith(".")
    }
    manifest = {**manifest, "format": BUNDLE_FORMAT, "files": files}
    manifest["manifest_sha256"] = _content_hash(manifest)
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    (folder / SIGNATURE).unlink(missing_ok=True)  # a new manifest needs a new signature
    tmp.replace(folder / MANIFEST)
    return manifest


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict[str, Any]
    signer: str | None = None
    """The id of the trusted key whose signature was checked; None when none was asked for."""

    def file(self, name: str) -> Path:
        if name not in self.manifest["files"]:
            raise BundleError("not part of this bundle (the manifest does not list it)", path=self.path / name)
        return self.path / name

    def has(self, name: str) -> bool:
        return name in self.manifest["files"]

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.manifest["classes"])

    @property
    def sample_rate(self) -> int:
        return int(self.manifest["sample_rate"])

    @property
    def window_samples(self) -> int:
        return int(self.manifest["window_samples"])

    def quality_config(self) -> QualityConfig:
        return QualityConfig.from_dict(self.manifest["quality"])


REQUIRED_KEYS = ("classes", "sample_rate", "window_samples", "hop_seconds", "quality", "inputs", "outputs", "opset")


def load_bundle(folder: str | Path) -> Bundle:
    """Read and verify a bundle: format version, manifest integrity, every file's size and sha256."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise BundleError("bundle folder does not exist", path=folder)
    if not path.is_file():
        raise BundleError("missing: not a model bundle (export one with `qlung-edge export`)", path=path)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"unreadable manifest ({err})", path=path) from None
    if not isinstance(manifest, dict):
        raise BundleError("manifest is not a JSON object", path=path)
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(
            f"bundle format {manifest.get('format')!r}; this qlung-edge reads format {BUNDLE_FORMAT}", path=path
        )
    if manifest.get("manifest_sha256") != _content_hash(manifest):
        raise BundleError("manifest was altered after export (its content hash does not match)", path=path)
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise BundleError(f"manifest lacks {', '.join(missing)}", path=path)
    for name, record in manifest.get("files", {}).items():
        file = folder / name
        if not file.is_file():
            raise BundleError("listed in the manifest but missing", path=file)
        if file.stat().st_size != record["bytes"] or sha256_file(file) != record["sha256"]:
            raise BundleError("altered or damaged: its sha256 does not match the manifest", path=file)
    if MODEL_FILE not in manifest.get("files", {}):
        raise BundleError(f"the manifest lists no {MODEL_FILE}", path=path)
    return Bundle(folder, manifest)


@contextmanager
def staged_folder(out: str | Path, force: bool = False) -> Iterator[Path]:
    """A temporary folder beside `out` that becomes `out` only if the block finishes.

    A failure leaves neither a half-written bundle nor a damaged previous one; `force` replaces an existing
    folder only after the new one is complete.
    """
    out = Path(out)
    if out.exists() and not force:
        raise BundleError("already exists (use --force to replace it)", path=out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.with_name(f".{out.name}.partial")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = out.with_name(f".{out.name}.old")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    stage.rename(out)
    shutil.rmtree(old, ignore_errors=True)
