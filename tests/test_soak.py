"""The soak benchmark's books on a short run: every window and every event accounted for under faults."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from qlung_edge.classifier import SHIPPED_BUNDLE
from qlung_edge.soak import run_soak

WAV = Path("sprsound") / "test_wav" / "40890405_3.3_0_p1_3652.wav"


@pytest.fixture
def soak_wav(shared_data: Path) -> Path:
    """A real SPRSound recording to soak with; the soak needs a real broker to restart."""
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.skip("mosquitto not installed (scripts/setup.sh installs it)")
    return shared_data / WAV


def test_a_short_soak_balances(soak_wav: Path) -> None:
    lines: list[str] = []
    report = run_soak(SHIPPED_BUNDLE, soak_wav, minutes=1.5, speed=20, broker_every=2.0, log_line=lines.append)
    assert report.exit_status == 0
    # ~85 windows on an idle box; unplugs and restarts are paced by the wall clock, so a loaded box (CI beside a
    # training run) processes less of the audio: 60 were seen there.
    assert report.balanced and report.windows >= 40
    assert report.samples_accounted, (
        "every frame not lost to an unplug (or the host's reconnect wait) is audio or a flagged gap"
    )
    assert report.samples > report.samples_expected / 2
    assert report.nothing_lost, report.missing
    assert report.broker_acknowledged == report.events
    assert report.broker_restarts >= 1 and report.reloads >= 1 and report.unplugs >= 1
    assert report.disk_full_seconds > 0 and report.jsonl_spooled_max > 0, "the full disk was felt"
    assert report.sink_dropped == {"collect": 0, "jsonl": 0, "mqtt": 0}
    assert lines, "progress is shown per audio minute"


def test_a_fault_injection_that_breaks_fails_the_soak_at_once(soak_wav: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken chaos thread used to leave the daemon running until CI's timeout; it now stops it and says why."""
    from firmware_bridge.simulator import DeviceSimulator

    def broken_unplug(self: DeviceSimulator, seconds: float) -> None:
        raise OSError("the unplug could not be simulated")

    monkeypatch.setattr(DeviceSimulator, "unplug", broken_unplug)
    with pytest.raises(RuntimeError, match=r"fault injection failed.*could not be simulated"):
        run_soak(SHIPPED_BUNDLE, soak_wav, minutes=1.5, speed=20, broker_every=2.0, log_line=lambda line: None)
