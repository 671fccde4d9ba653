"""Shared fixtures: the real data beside the checkout, and a small synthetic data set.

Without the real data, the tests that need it skip with one line saying how to provide it. In CI (CI=true) a
skipped test fails unless it is marked `gpu`: only tests that need hardware this machine cannot have may skip.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ["QLUNG_VALIDATE_EVENTS"] = "1"  # every daemon the tests start, in or out of process, checks its events
SHARED_DATA = Path(os.environ.get("QLUNG_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real recordings (ICBHI sample, SPRSound) beside the checkout; without them those tests skip, in CI they
    fail (the hook below)."""
    if not (SHARED_DATA / "icbhi-sample").is_dir() or not (SHARED_DATA / "sprsound").is_dir():
        pytest.skip(
            f"real data not found at {SHARED_DATA}: set QLUNG_SHARED_DATA to a folder holding icbhi-sample/, "
            "icbhi-annotations/ and sprsound/"
        )
    return SHARED_DATA


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 recordings in each layout, written once per test session."""
    from training.synth import SynthConfig, synthesize

    root = tmp_path_factory.mktemp("synth")
    synthesize(root, SynthConfig(recordings=40, seed=7), progress=False)
    return root


def make_checkpoint(path: Path, backbone: str = "edge-cnn") -> Path:
    """An untrained but complete checkpoint of the demo recipe (seeded: the same weights every time)."""
    import torch

    from training.checkpoint import build_model, checkpoint_payload, save_checkpoint
    from training.config import load_recipe

    torch.manual_seed(0)
    config = load_recipe("demo", [f"model.backbone={backbone}"])
    model = build_model(config).eval()
    payload = checkpoint_payload(
        config, model.state_dict(), epoch=1, metrics={"validation": {"score": 0.5}}, selection="validation"
    )
    save_checkpoint(path, payload)
    return path


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt")


@pytest.fixture(scope="session")
def bundle(checkpoint: Path, shared_data: Path, synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One exported bundle (FP32 + INT8) for the export, daemon and bench tests; tests that alter it copy it."""
    from export.onnx_export import export_bundle

    out = tmp_path_factory.mktemp("bundle") / "b"
    export_bundle(
        checkpoint, out, real_audio=shared_data / "icbhi-sample", int8=True, calibration=synth_root / "icbhi", log=print
    )
    return out


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and item.get_closest_marker("gpu") is None:
        report.outcome = "failed"
        report.longrepr = f"skipped in CI without a gpu marker: {report.longrepr}"


# --- a real MQTT broker on loopback, started and stopped by the test -----------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        (folder / "data").mkdir()
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(
            # As root, mosquitto would switch to its own user, which cannot write in our private folder: its
            # persistence (sessions kept across a restart) would silently be off.
            f"user {getpass.getuser()}\n"
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {folder / 'data'}/\nautosave_interval 1\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture()
def broker(tmp_path: Path) -> Iterator[Broker]:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.skip("mosquitto not installed (scripts/setup.sh installs it)")
    if shutil.which("mosquitto") is None:
        os.environ["PATH"] += os.pathsep + "/usr/sbin"
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()
