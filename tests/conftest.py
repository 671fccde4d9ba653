"""Shared fixtures: the real data beside the checkout, and a small synthetic data set.

In CI (CI=true) a skipped test fails unless it is marked `gpu`: only tests that
need hardware this machine cannot have may skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("QLUNG_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real data not found at {SHARED_DATA} (set QLUNG_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 recordings in each layout, written once per test session."""
    from training.synth import SynthConfig, synthesize

    root = tmp_path_factory.mktemp("synth")
    synthesize(root, SynthConfig(recordings=40, seed=7), progress=False)
    return root


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and item.get_closest_marker("gpu") is None:
        report.outcome = "failed"
        report.longrepr = f"skipped in CI without a gpu marker: {report.longrepr}"
