"""Shared fixtures: the real data beside the checkout, and a small synthetic data set.

Without the real data, the tests that need it skip with one line saying how to provide it. In CI (CI=true) a
skipped test fails unless it is marked `gpu`: only tests that need hardware this machine cannot have may skip.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from qlung_edge.soak import PrivateBroker

REPO = Path(__file__).resolve().parents[1]
os.environ["QLUNG_VALIDATE_EVENTS"] = "1"  # every daemon the tests start, in or out of process, checks its events
SHARED_DATA = Path(os.environ.get("QLUNG_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture()
def scripts_importable(monkeypatch: pytest.MonkeyPatch) -> Path:
    """scripts/ on the import path for one test: its modules are command-line scripts, not a package."""
    folder = REPO / "scripts"
    monkeypatch.syspath_prepend(str(folder))
    return folder


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


Broker = PrivateBroker
"""mosquitto on a free loopback port with persistence, stopped and started by the test (the soak's broker)."""


@pytest.fixture()
def broker(tmp_path: Path) -> Iterator[Broker]:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.skip("mosquitto not installed (scripts/setup.sh installs it)")
    b = Broker(tmp_path)
    b.start()
    yield b
    b.close()
