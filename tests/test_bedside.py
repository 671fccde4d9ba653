"""The bedside page, in a real headless Chromium: a real recording streams through the daemon, the page shows
its windows, quality and running answer as they come (Server-Sent Events), and the verdict once the
examination is stopped from the page's own button."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from firmware_bridge.sources import FileSource
from qlung_edge.audio import read_audio
from qlung_edge.classifier import SHIPPED_BUNDLE
from qlung_edge.daemon import Daemon, DaemonConfig
from qlung_edge.live import LiveFeed, envelope
from qlung_edge.sinks import CollectSink

SCREENSHOT = os.environ.get("QLUNG_BEDSIDE_SCREENSHOT")
"""Where to keep the screenshot (scripts/bedside-screenshot.sh sets it to docs/bedside.png)."""


def test_envelope_is_the_min_and_max_of_each_step() -> None:
    x = np.array([0.0, 1.0, -2.0, 0.5, 3.0], np.float32)
    assert envelope(x, 150, 0.02) == [[-2.0, 1.0], [0.5, 3.0]]  # 3 samples a step, a short last one
    assert envelope(np.zeros(0), 100) == []


def test_a_late_page_gets_recent_events_and_a_slow_one_loses_only_its_oldest() -> None:
    feed = LiveFeed(replay=2, per_client=3)
    for i in range(3):
        feed.publish("window", {"i": i})
    feed.publish("signal", {"envelope": []}, keep=False)
    stream = feed.messages(keepalive=0.05)
    assert next(stream) == b"retry: 2000\n\n"
    assert [next(stream) for _ in range(2)] == [
        b'event: window\ndata: {"i":1}\n\n',
        b'event: window\ndata: {"i":2}\n\n',
    ]
    for i in range(3, 8):  # nobody reads: the queue keeps the newest three
        feed.publish("window", {"i": i})
    assert [json.loads(next(stream).split(b"data: ")[1]) for _ in range(3)] == [{"i": 5}, {"i": 6}, {"i": 7}]
    assert next(stream) == b": keep-alive\n\n"
    feed.close()
    assert list(stream) == [] and not feed.watching


def _chrome() -> object:
    webdriver = pytest.importorskip("selenium.webdriver")
    if shutil.which("chromium") is None or shutil.which("chromedriver") is None:
        pytest.skip("chromium and chromium-driver are not installed (scripts/setup.sh installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    return webdriver.Chrome(options=options, service=service)


def _wait(check: object, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"not seen within {seconds} s")


def test_the_bedside_page_shows_a_real_recording_live(shared_data: Path, tmp_path: Path) -> None:
    # A real SPRSound test recording (the shipped model's own stethoscope), repeated to 45 s.
    clean = read_audio(shared_data / "sprsound" / "test_wav" / "40890405_3.3_0_p1_3652.wav")
    wav = tmp_path / "long.wav"
    sf.write(wav, np.resize(clean.samples, clean.sample_rate * 45), clean.sample_rate)
    driver = _chrome()
    sink = CollectSink()
    config = DaemonConfig(bundle=SHIPPED_BUNDLE, source="file", sinks=[], http="127.0.0.1:0", stream_name="bed-7")
    daemon = Daemon(config, source=FileSource(name="f", path=wav, realtime=True, speed=3), sinks=[sink])
    runner = threading.Thread(target=daemon.run)
    runner.start()
    try:
        assert daemon.server is not None
        base = "http://{}:{}/".format(*daemon.server.address)
        driver.get(base)  # type: ignore[attr-defined]
        text = lambda element: driver.find_element("id", element).text  # type: ignore[attr-defined]  # noqa: E731
        _wait(lambda: text("connection") == "live")
        _wait(lambda: int(text("window-count") or 0) >= 3)
        assert text("stream") == "bed-7"
        assert 0.0 <= float(text("aqs")) <= 1.0 and text("quality-status") in ("good", "poor")
        assert text("exam-id") != "none" and "windows" in text("running")
        assert not driver.find_element("id", "empty").is_displayed()  # type: ignore[attr-defined]
        drawn = driver.execute_script(  # type: ignore[attr-defined]
            "const c = document.getElementById('signal'); const d = c.getContext('2d')"
            ".getImageData(0, 0, c.width, c.height).data; let n = 0;"
            "for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n;"
        )
        assert drawn > 500, "the waveform strip is drawn"
        driver.find_element("id", "stop-exam").click()  # type: ignore[attr-defined]
        _wait(lambda: text("verdict") != "–")
        verdict = next(e for e in sink.events if e["type"] == "verdict")
        assert text("verdict") == f"{verdict['task_2_2']} ({verdict['task_2_1']})"
        assert verdict["ended_by"] == "control message" and text("control-answer") == "stop: ok"
        shown = int(text("window-count"))
        assert 3 <= shown <= sum(e["type"] == "window" for e in sink.events)
        health = json.loads(urllib.request.urlopen(base + "health", timeout=5).read())
        assert health["status"] == "ok"
        driver.save_screenshot(SCREENSHOT or str(tmp_path / "bedside.png"))  # type: ignore[attr-defined]
    finally:
        daemon.stop()
        runner.join(30)
        driver.quit()  # type: ignore[attr-defined]


def test_the_page_before_any_event_says_it_is_waiting(tmp_path: Path) -> None:
    driver = _chrome()
    feed = LiveFeed()
    from qlung_edge.telemetry import Metrics, StatusServer

    server = StatusServer(Metrics(), lambda: {"status": "ok"}, "127.0.0.1", 0, live=feed).start()
    try:
        driver.get("http://{}:{}/".format(*server.address))  # type: ignore[attr-defined]
        _wait(lambda: driver.find_element("id", "connection").text == "live")  # type: ignore[attr-defined]
        assert "Waiting for audio" in driver.find_element("id", "empty").text  # type: ignore[attr-defined]
        assert driver.find_element("id", "verdict").text == "–"  # type: ignore[attr-defined]
    finally:
        server.close()
        driver.quit()  # type: ignore[attr-defined]


def test_the_status_server_takes_a_burst_and_early_hang_ups_quietly(capfd: pytest.CaptureFixture[str]) -> None:
    """200 simultaneous /health requests (47 timed out with the default backlog of 5); clients that hang up
    before the answer print no traceback."""
    import socket
    from concurrent.futures import ThreadPoolExecutor

    from qlung_edge.telemetry import Metrics, StatusServer

    server = StatusServer(Metrics(), lambda: {"status": "ok"}, "127.0.0.1", 0, live=LiveFeed()).start()
    host, port = server.address
    try:

        def health(_: int) -> int:
            with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=20) as reply:
                return int(reply.status)

        with ThreadPoolExecutor(200) as pool:
            assert list(pool.map(health, range(200))) == [200] * 200
        for _ in range(20):  # ask for the page, hang up at once
            with socket.create_connection((host, port)) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        time.sleep(0.5)
        with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=5) as reply:
            assert reply.status == 200
    finally:
        server.close()
    assert "Traceback" not in capfd.readouterr().err
