"""The streaming daemon end to end: real recordings, degraded ones, overload, a serial link, MQTT, signals."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import soxr
from conftest import Broker
from prometheus_client.parser import text_string_to_metric_families

from firmware_bridge.simulator import DeviceSimulator, Impairments
from firmware_bridge.sources import FileSource, open_source
from qlung_edge.audio import read_audio
from qlung_edge.backends import Backend, OnnxBackend
from qlung_edge.bundle import MANIFEST, load_bundle, write_manifest
from qlung_edge.classifier import SHIPPED_BUNDLE
from qlung_edge.daemon import Daemon, DaemonConfig, DaemonError, backend_for
from qlung_edge.events import validate
from qlung_edge.onnx_sessions import onnx_session
from qlung_edge.sinks import CollectSink, JsonLinesSink, open_sink
from qlung_edge.streaming import Decision, SignalPath
from qlung_edge.telemetry import thread_wakeups

WINDOW, RATE = 128_000, 16_000


def _valid(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every event a test sees is checked against the shipped JSON Schema, and belongs to one run."""
    for event in events:
        validate(event)
    assert len({e["run_id"] for e in events}) <= 1
    return events


def _run(bundle: Path, source: Any, **options: Any) -> tuple[list[dict[str, Any]], Daemon]:
    sink = CollectSink()
    factory = options.pop("backend_factory", None)
    config = DaemonConfig(bundle=bundle, source="file:-", sinks=[], **options)
    daemon = Daemon(config, source=source, sinks=[sink], backend_factory=factory)
    assert daemon.run() == 0
    return _valid(sink.events), daemon


def _windows(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in _valid(events) if e["type"] == "window"]


def _accounted(events: list[dict[str, Any]], daemon: Daemon) -> list[dict[str, Any]]:
    windows = _windows(events)
    counts = daemon.metrics.snapshot()["counts"]
    statuses = [w["status"] for w in windows]
    assert [w["window"]["index"] for w in windows] == list(range(len(windows))), "every window once, in order"
    assert len(windows) == counts["windows"]
    assert statuses.count("classified") + statuses.count("gated") + statuses.count("dropped") == len(windows)
    assert statuses.count("dropped") == counts.get("windows_dropped", 0)
    assert events[-1]["type"] == "stop" and events[-1]["counts"]["windows"] == len(windows)
    return windows


def _offline(bundle: Path, path: Path, hop: int) -> tuple[np.ndarray, np.ndarray]:
    """The same windows cut from the whole file resampled at once, and the model's answers for them."""
    audio = read_audio(path)
    x = audio.samples if audio.sample_rate == RATE else soxr.resample(audio.samples, audio.sample_rate, RATE, "HQ")
    count = (len(x) - WINDOW) // hop + 1
    windows = np.stack([x[i * hop : i * hop + WINDOW] for i in range(count)]) if count > 0 else np.zeros((0, WINDOW))
    session = onnx_session(load_bundle(bundle).file("model.onnx"))
    probabilities = session.run(["probabilities"], {"waveform": windows.astype(np.float32)})[0] if count else windows
    return windows, probabilities


def test_real_recordings_stream_like_the_offline_model(bundle: Path, shared_data: Path) -> None:
    """The ten real ICBHI recordings (4 and 44.1 kHz, 16/24/32-bit) through the daemon as fast as possible."""
    total = 0
    for path in sorted((shared_data / "icbhi-sample").glob("*.wav")):
        events, daemon = _run(bundle, FileSource(name=f"file:{path}", path=path), hop_seconds=1.0)
        windows = _accounted(events, daemon)
        _, reference = _offline(bundle, path, RATE)
        assert len(windows) == len(reference), path.name
        for event, expected in zip(windows, reference):
            assert event["status"] in ("classified", "gated")
            if event["status"] == "classified":
                got = np.array(list(event["prediction"]["probabilities"].values()))
                np.testing.assert_allclose(got, expected, atol=2e-5, err_msg=f"{path.name} window {event['window']}")
                total += 1
        assert daemon.metrics.snapshot()["counts"]["samples"] == sf.info(str(path)).frames
    assert total >= 50


def test_the_daemon_says_what_the_signal_path_and_backend_say(bundle: Path, shared_data: Path) -> None:
    """The daemon only moves blocks and results: its window events are SignalPath's decisions plus the backend's
    answers for the accepted windows, on all ten real ICBHI recordings."""
    loaded = load_bundle(bundle)
    config = DaemonConfig(bundle=bundle, source="file:-", sinks=[], hop_seconds=1.0)
    backend = backend_for(loaded, config)
    compared = 0
    for wav in sorted((shared_data / "icbhi-sample").glob("*.wav")):
        events, _ = _run(bundle, FileSource(name=f"file:{wav}", path=wav), hop_seconds=1.0)
        windows = _windows(events)
        path = SignalPath(loaded.window_samples, RATE, loaded.quality_config(), config.gate)
        outputs = list(path.feed(FileSource(name="f", path=wav).blocks()))
        decisions = [d for d in outputs if isinstance(d, Decision)]
        assert len(windows) == len(decisions) > 0, wav.name
        accepted = [d for d in decisions if d.accepted]
        answers = backend.run(np.stack([d.window.samples for d in accepted])) if accepted else []
        expected = iter(answers)
        for event, decision in zip(windows, decisions):
            w = decision.window
            assert (event["window"]["index"], event["window"]["start"], event["window"]["end"]) == (
                w.index, round(w.start, 4), round(w.end, 4),
            )  # fmt: skip
            assert event["quality"]["aqs"] == round(w.report.aqs, 4)
            assert event["status"] == ("classified" if decision.accepted else "gated")
            assert event.get("reasons", []) == list(decision.reasons)
            if decision.accepted:
                got = list(event["prediction"]["probabilities"].values())
                np.testing.assert_allclose(got, next(expected), atol=1e-5)
                compared += 1
        assert events[0]["model_id"] == loaded.manifest["manifest_sha256"] == windows[0]["model_id"]
        assert windows[0]["window"]["start_utc"] < windows[-1]["window"]["end_utc"]
    backend.close()
    assert compared >= 50


def _degrade(samples: np.ndarray, how: str, rng: np.random.Generator) -> np.ndarray:
    if how == "quiet":
        return samples * 0.0005
    if how == "clipped":
        return np.clip(samples * 40, -1, 1)
    if how == "noise":
        return (0.1 * rng.standard_normal(len(samples))).astype(np.float32)
    if how == "dropout":
        out = samples.copy()
        for start in range(0, len(out), 16_000):
            out[start : start + 4000] = 0.0
        return out
    raise ValueError(how)


@pytest.mark.parametrize(
    ("how", "reason"), [("quiet", "too_quiet"), ("clipped", "clipped"), ("noise", "noise_like"), ("dropout", "dropout")]
)
def test_degraded_recordings_are_gated_with_the_right_reason(
    bundle: Path, shared_data: Path, tmp_path: Path, how: str, reason: str
) -> None:
    clean = read_audio(shared_data / "icbhi-sample" / "104_1b1_Al_sc_Litt3200.wav")
    x = soxr.resample(clean.samples, clean.sample_rate, RATE, "HQ")
    path = tmp_path / f"{how}.wav"
    sf.write(path, _degrade(x, how, np.random.default_rng(0)), RATE, subtype="FLOAT")
    events, daemon = _run(bundle, FileSource(name=f"file:{path}", path=path), hop_seconds=2.0)
    windows = _accounted(events, daemon)
    assert windows and all(w["status"] == "gated" for w in windows)
    assert all(reason in w["reasons"] and w["advice"] for w in windows)
    assert daemon.metrics.snapshot()["gated"][reason] == len(windows)


class SlowBackend(OnnxBackend):
    def run_all(self, windows: np.ndarray) -> dict[str, np.ndarray]:
        time.sleep(0.15)
        return super().run_all(windows)


def _long_recording(shared_data: Path, path: Path, seconds: int) -> Path:
    """A real recording repeated to `seconds` at 16 kHz: breath sounds the gate accepts."""
    clean = read_audio(shared_data / "icbhi-sample" / "104_1b1_Al_sc_Litt3200.wav")
    x = soxr.resample(clean.samples, clean.sample_rate, RATE, "HQ")
    sf.write(path, np.resize(x, RATE * seconds), RATE, subtype="FLOAT")
    return path


def test_overload_drops_windows_never_samples(bundle: Path, shared_data: Path, tmp_path: Path) -> None:
    path = _long_recording(shared_data, tmp_path / "long.wav", 40)

    def slow(b: Any, c: DaemonConfig) -> Backend:
        return SlowBackend("slow", b, 1)

    options: dict[str, Any] = {"hop_seconds": 0.5, "max_pending": 2, "max_batch": 1, "drop_when_behind": True}
    events, daemon = _run(bundle, FileSource(name="file:long", path=path), backend_factory=slow, **options)
    windows = _accounted(events, daemon)
    counts = daemon.metrics.snapshot()["counts"]
    assert counts["samples"] == RATE * 40, "every sample reached the processing thread"
    assert len(windows) == (RATE * 40 - WINDOW) // (RATE // 2) + 1, "every hop produced a window"
    assert counts["windows_dropped"] > 10
    assert counts["inferences"] + counts["windows_dropped"] + sum(daemon.metrics.gated.values()) == len(windows)


def test_serial_link_with_impairments_flags_device_gaps(bundle: Path, tmp_path: Path) -> None:
    path = tmp_path / "steth.wav"
    rng = np.random.default_rng(2)
    t = np.arange(8000 * 60) / 8000
    breath = 0.2 * np.sin(2 * np.pi * 0.25 * t) ** 2
    sf.write(path, (breath * rng.standard_normal(len(t)) * 0.3).astype(np.float32), 8000, subtype="PCM_16")
    # A few losses a minute, so that some windows hold a gap and others do not.
    impairments = Impairments(bit_error_rate=2e-7, drop_rate=0.002, duplicate_rate=0.01, reorder_rate=0.01)
    with DeviceSimulator(path, speed=10, impairments=impairments, seed=5) as simulator:
        source = open_source(f"serial:{simulator.path}", reconnect_seconds=0.05)
        sink = CollectSink()
        config = DaemonConfig.from_dict(
            {
                "bundle": str(bundle),
                "source": "serial",
                "sinks": [],
                "hop_seconds": 1.0,
                "gate": {"reopen_after": 1, "max_gap_seconds": 0.0},
            }
        )
        daemon = Daemon(config, source=source, sinks=[sink])
        runner = threading.Thread(target=daemon.run)
        runner.start()
        assert simulator.wait(60)
        time.sleep(0.5)
        daemon.stop()
        runner.join(10)
    windows = _accounted(sink.events, daemon)
    assert len(windows) >= 20
    for w in windows:
        has_gap = w["quality"]["gap_seconds"] > 0
        assert has_gap == ("device_gap" in w.get("reasons", [])), w
    gapped = [w for w in windows if w["quality"]["gap_seconds"] > 0]
    assert gapped and len(gapped) < len(windows)
    assert any(w["status"] == "classified" for w in windows)
    stats = sink.events[-1]["source_stats"]
    assert (
        stats["lost_frames"] >= 1 and stats["decoder_crc_errors"] + stats["lost_frames"] >= simulator.counters.dropped
    )


def test_audit_clips_hold_the_raw_audio_and_respect_the_size_cap(
    bundle: Path, shared_data: Path, tmp_path: Path
) -> None:
    path = shared_data / "icbhi-sample" / "104_1b1_Al_sc_Litt3200.wav"  # 4 kHz
    raw = read_audio(path).samples
    audit = tmp_path / "audit"
    sink = CollectSink()
    config = DaemonConfig(bundle=bundle, source="file:-", sinks=[], audit_dir=audit, audit_max_mb=0.4)
    daemon = Daemon(config, source=FileSource(name="f", path=path), sinks=[sink])
    assert daemon.audit is not None
    daemon.audit.labels = ("normal", "crackle", "wheeze", "both")  # record every window
    daemon.audit.min_probability = 0.0
    daemon.run()
    clips = sorted(audit.glob("*.wav"))
    assert daemon.audit.written == len(_windows(sink.events)) and daemon.audit.deleted > 0
    assert clips and sum(p.stat().st_size for p in clips) <= 0.4e6
    for clip in clips:
        meta = json.loads(clip.with_suffix(".json").read_text())
        data, rate = sf.read(clip, dtype="float32")
        assert rate == 4000
        begin = round(meta["clip_start"] * rate)
        np.testing.assert_array_equal(data, raw[begin : begin + len(data)])
        assert meta["event"]["status"] == "classified"
        assert clip.stat().st_mode & 0o777 == 0o600 and clip.with_suffix(".json").stat().st_mode & 0o777 == 0o600
        assert meta["event"]["run_id"][:8] in clip.name
    # A restart (new run id, window indices from 0 again) adds clips beside the old ones.
    before = {p.name for p in audit.glob("*.wav")}
    again = Daemon(config, source=FileSource(name="f", path=path), sinks=[CollectSink()])
    assert again.audit is not None
    again.audit.labels, again.audit.min_probability, again.audit.max_bytes = (
        ("normal", "crackle", "wheeze", "both"),
        0.0,
        10**9,
    )
    again.run()
    assert again.audit.written > 0 and before <= {p.name for p in audit.glob("*.wav")}


def test_jsonl_file_rotates_and_keeps_every_line(tmp_path: Path) -> None:
    sink = open_sink(f"jsonl:{tmp_path / 'events.jsonl'}?max_mb=0.002&backups=3")
    assert isinstance(sink, JsonLinesSink)
    for i in range(150):  # about 10 kB: more than the current file and its 3 backups hold
        sink.send({"schema": 1, "seq": i, "pad": "x" * 40})
    sink.close()
    files = sorted(tmp_path.glob("events.jsonl*"))
    assert len(files) == 4 and all(p.stat().st_size <= 2000 for p in files)
    kept = sorted(json.loads(line)["seq"] for p in files for line in p.read_text().splitlines())
    assert kept == list(range(150 - len(kept), 150)) and len(kept) > 80


def test_config_file_flags_and_errors(tmp_path: Path, bundle: Path) -> None:
    toml = tmp_path / "daemon.toml"
    toml.write_text(
        f'bundle = "{bundle}"\nsource = "file:x.wav"\nsinks = ["jsonl:-"]\nhop_seconds = 2.0\n'
        "[gate]\nreopen_after = 3\n[source_options]\nrealtime = true\n"
    )
    config = DaemonConfig.from_toml(toml, {"hop_seconds": 0.5})
    assert config.hop_seconds == 0.5 and config.gate.reopen_after == 3 and config.source_options == {"realtime": True}
    toml.write_text('bundle = "b"\nsorce = "mic:"\n')
    with pytest.raises(DaemonError, match=r"daemon\.toml: unknown key sorce"):
        DaemonConfig.from_toml(toml)
    # Wrong types name the key, in the TOML as in recipes: nothing is read as something else.
    for line, message in (
        ('threads = "2"', r"threads: expected an integer, got str '2'"),
        ('hop_seconds = "1"', r"hop_seconds: expected a number, got str '1'"),
        ('emit_gated = "no"', r"emit_gated: expected true or false, got str 'no'"),
        ("[gate]\nreopen_after = 1.5", r"gate\.reopen_after: expected an integer, got float 1\.5"),
        ('sinks = "jsonl:-"', r"sinks: expected a list, got str"),
    ):
        toml.write_text(f'bundle = "b"\n{line}\n')
        with pytest.raises(DaemonError, match=rf"daemon\.toml: {message}"):
            DaemonConfig.from_toml(toml)
    toml.write_text("bundle = \n")
    with pytest.raises(DaemonError, match=r"daemon\.toml: not valid TOML"):
        DaemonConfig.from_toml(toml)


def test_the_shipped_deployment_config_parses() -> None:
    config = DaemonConfig.from_toml(Path(__file__).parents[1] / "qlung_edge" / "deploy" / "daemon.toml")
    assert config.source.startswith("serial:") and len(config.sinks) == 2 and config.gate.reopen_after == 2
    assert config.http == "127.0.0.1:9108"


def _cli(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qlung_edge.cli", *args], capture_output=True, text=True, timeout=120, **kwargs
    )


def test_check_validates_and_names_a_tampered_bundle(bundle: Path, shared_data: Path, tmp_path: Path) -> None:
    wav = shared_data / "icbhi-sample" / "104_1b1_Al_sc_Litt3200.wav"
    ok = _cli("daemon", "--bundle", str(bundle), "--source", f"file:{wav}", "--check")
    assert ok.returncode == 0, ok.stderr
    assert "check passed" in ok.stdout and "max |dp|" in ok.stdout
    copy = tmp_path / "tampered"
    shutil.copytree(bundle, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 1
    (copy / "model.onnx").write_bytes(bytes(data))
    bad = _cli("daemon", "--bundle", str(copy), "--source", f"file:{wav}", "--check")
    assert bad.returncode == 2 and "model.onnx: altered or damaged" in bad.stderr
    nosource = _cli("daemon", "--bundle", str(bundle), "--source", "file:/nonexistent.wav", "--check")
    assert nosource.returncode == 2 and "nonexistent.wav" in nosource.stderr


# --- signals and the HTTP endpoint, on a real subprocess -------------------------------------


def _renamed_bundle(bundle: Path, out: Path, name: str) -> Path:
    shutil.copytree(bundle, out)
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["name"] = name
    write_manifest(out, {k: v for k, v in manifest.items() if k not in ("files", "manifest_sha256", "format")})
    load_bundle(out)
    return out


def _read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return _valid([json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")])


def _wait_for(path: Path, test: Any, timeout: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = _read_events(path)
        if test(events):
            return events
        time.sleep(0.05)
    raise AssertionError(f"timed out; events so far: {[e['type'] for e in _read_events(path)]}")


def test_sighup_swaps_the_bundle_and_sigterm_flushes(bundle: Path, shared_data: Path, tmp_path: Path) -> None:
    first = _renamed_bundle(bundle, tmp_path / "b1", "first")
    second = _renamed_bundle(bundle, tmp_path / "b2", "second")
    current = tmp_path / "current"
    current.symlink_to(first)
    wav = _long_recording(shared_data, tmp_path / "long.wav", 120)
    events_file = tmp_path / "events.jsonl"
    toml = tmp_path / "daemon.toml"
    toml.write_text(
        f'bundle = "{current}"\nsource = "file:{wav}"\nsinks = ["jsonl:{events_file}"]\nhttp = "127.0.0.1:0"\n'
        "hop_seconds = 1.0\n[source_options]\nrealtime = true\nspeed = 8.0\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "qlung_edge.cli", "daemon", "--config", str(toml)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        events = _wait_for(events_file, lambda ev: any(e["type"] == "window" for e in ev))
        start = events[0]
        assert start["type"] == "start" and start["model"] == "first"
        host, port = start["http"].split(":")
        assert host == "127.0.0.1"
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read())
        assert health["status"] == "ok" and health["backend"].startswith("onnx")
        assert [s["name"] for s in health["sinks"]] == [f"jsonl:{events_file}"] and health["sinks"][0]["connected"]
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        families = {f.name: f for f in text_string_to_metric_families(metrics)}
        assert families["qlung_windows"].type == "counter" and families["qlung_windows"].samples[0].value >= 1
        assert families["qlung_window_latency_seconds"].type == "histogram"
        assert "process_cpu_seconds" in families and "process_resident_memory_bytes" in families
        build = families["qlung_build_info"].samples[0].labels
        assert build["model"] == "first" and build["model_id"] == start["model_id"]
        assert families["qlung_sink_connected"].samples[0].value == 1.0
        current.unlink()
        current.symlink_to(second)
        process.send_signal(signal.SIGHUP)
        events = _wait_for(events_file, lambda ev: any(e["type"] == "reload" for e in ev))
        reload = next(e for e in events if e["type"] == "reload")
        assert reload["ok"] and reload["model"] == "second"
        windows_before = sum(e["type"] == "window" for e in events)
        _wait_for(events_file, lambda ev: sum(e["type"] == "window" for e in ev) > windows_before + 2)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, err
    events = _read_events(events_file)
    assert events[-1]["type"] == "stop"
    windows = [e for e in events if e["type"] == "window"]
    assert [w["window"]["index"] for w in windows] == list(range(len(windows)))
    assert events[-1]["counts"]["windows"] == len(windows) < 113, "stopped before the end of the file"
    # The audio stream went on across the reload: window times are continuous.
    assert all(b["window"]["start"] - a["window"]["start"] == 1.0 for a, b in zip(windows, windows[1:]))


# --- MQTT against a real broker --------------------------------------------------------------


def test_mqtt_events_survive_a_broker_restart(bundle: Path, broker: Broker, shared_data: Path, tmp_path: Path) -> None:
    import paho.mqtt.client as mqtt

    received: dict[int, dict[str, Any]] = {}
    subscriber = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id="qlung-test-listener", clean_session=False
    )  # fmt: skip
    statuses: list[dict[str, Any]] = []

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        payload = json.loads(message.payload)
        if message.topic == "ward/bed1/status":
            statuses.append(payload)
            return
        assert message.topic == f"ward/bed1/{payload['type']}", "one topic per event type"
        received.setdefault(payload["seq"], payload)

    subscriber.on_connect = lambda c, u, f, rc, p=None: c.subscribe("ward/bed1/#", qos=1)
    subscriber.on_message = on_message
    subscriber.reconnect_delay_set(1, 1)
    subscriber.connect("127.0.0.1", broker.port)
    subscriber.loop_start()
    wav = _long_recording(shared_data, tmp_path / "long.wav", 60)
    # The daemon waits longer before reconnecting than the listener, so the listener is back first and
    # everything the daemon replays from its buffer reaches it whether or not the broker kept its session.
    sink = open_sink(f"mqtt://127.0.0.1:{broker.port}/ward/bed1?client_id=qlung-test-daemon&buffer=1000&reconnect=3")
    config = DaemonConfig(bundle=bundle, source="file", sinks=[], hop_seconds=1.0)
    daemon = Daemon(config, source=FileSource(name="f", path=wav, realtime=True, speed=10), sinks=[sink])
    try:
        runner = threading.Thread(target=daemon.run)
        runner.start()
        time.sleep(2.0)
        broker.stop()
        time.sleep(1.5)
        outage = sink.unsent()
        health = daemon.health()
        assert health["status"] == "degraded" and not health["sinks"][0]["connected"]
        assert health["sinks"][0]["buffered"] > 0 and "disconnected" in health["sinks"][0]["last_error"]
        broker.start()
        runner.join(60)
        deadline = time.monotonic() + 20
        while len(received) < daemon._seq and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        subscriber.loop_stop()
        subscriber.disconnect()
    stats = sink.stats()
    assert outage > 0, "events were produced while the broker was down"
    assert stats["reconnects"] >= 1 and stats["dropped"] == 0 and stats["unsent"] == 0
    assert sorted(received) == list(range(daemon._seq)), "every event arrived (duplicates allowed, QoS 1)"
    _valid(list(received.values()))
    assert sum(e["type"] == "window" for e in received.values()) == 53
    assert [s["state"] for s in statuses][:1] == ["online"] and statuses[-1]["state"] == "offline"
    assert statuses[-1]["reason"] == "stopped"


def test_mqtt_status_is_retained_and_the_last_will_says_offline(broker: Broker, tmp_path: Path) -> None:
    import paho.mqtt.client as mqtt

    script = (
        "import os, time\n"
        "from qlung_edge.sinks import open_sink\n"
        f"sink = open_sink('mqtt://127.0.0.1:{broker.port}/ward/bed2?client_id=vanishing')\n"
        "deadline = time.monotonic() + 10\n"
        "while not sink.health().connected and time.monotonic() < deadline: time.sleep(0.05)\n"
        "time.sleep(0.3)\n"
        "os._exit(0)  # gone without a DISCONNECT: the broker publishes the last will\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=30)
    seen: list[tuple[bool, dict[str, Any]]] = []
    listener = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="status-reader")
    listener.on_connect = lambda c, u, f, rc, p=None: c.subscribe("ward/bed2/status", qos=1)
    listener.on_message = lambda c, u, m: seen.append((m.retain, json.loads(m.payload)))
    listener.connect("127.0.0.1", broker.port)
    listener.loop_start()
    deadline = time.monotonic() + 10  # the broker sends the will within 1.5 keep-alives at most
    while not any(s["state"] == "offline" for _, s in seen) and time.monotonic() < deadline:
        time.sleep(0.1)
    listener.loop_stop()
    listener.disconnect()
    assert seen and seen[-1][0], "the status is retained for late subscribers"
    assert seen[-1][1]["state"] == "offline" and seen[-1][1]["reason"] == "connection lost"


def test_torch_backend_matches_onnx_runtime(bundle: Path, checkpoint: Path, shared_data: Path) -> None:
    path = shared_data / "icbhi-sample" / "104_1b1_Al_sc_Litt3200.wav"
    onnx_events, _ = _run(bundle, FileSource(name="f", path=path), hop_seconds=2.0)
    torch_events, _ = _run(
        bundle, FileSource(name="f", path=path), hop_seconds=2.0, backend="torch", checkpoint=checkpoint
    )
    a = [list(e["prediction"]["probabilities"].values()) for e in _windows(onnx_events) if "prediction" in e]
    b = [list(e["prediction"]["probabilities"].values()) for e in _windows(torch_events) if "prediction" in e]
    assert len(a) == len(b) > 0
    np.testing.assert_allclose(a, b, atol=2e-4)


def test_nan_samples_from_a_pipe_become_a_flagged_gap_not_a_crash(bundle: Path, shared_data: Path) -> None:
    import io

    clean = read_audio(shared_data / "icbhi-sample" / "104_1b1_Al_sc_Litt3200.wav")
    x = np.resize(clean.samples, 4000 * 20).astype("<f4")
    x[4000 * 10 : 4000 * 10 + 50] = np.nan
    source = open_source("stdin:", rate=4000, format="f32le", stream=io.BytesIO(x.tobytes()))
    events, daemon = _run(bundle, source, hop_seconds=1.0)
    windows = _accounted(events, daemon)
    assert len(windows) == 13
    notes = [e for e in events if e["type"] == "source" and "NaN" in e.get("note", "")]
    assert len(notes) == 1
    hit = [w for w in windows if w["window"]["start"] <= 10.0 and w["window"]["end"] >= 10.02]
    assert hit and all("device_gap" in w["reasons"] for w in hit)
    assert any(w["status"] == "classified" for w in windows)


def test_a_paced_source_wakes_the_signal_path_once_a_window_not_once_a_block(
    bundle: Path, shared_data: Path, tmp_path: Path
) -> None:
    wav = _long_recording(shared_data, tmp_path / "long.wav", 12)
    source = FileSource(name="f", path=wav, realtime=True, speed=20)  # 0.1 s blocks: 120 of them
    events, daemon = _run(bundle, source, hop_seconds=1.0)
    windows = _accounted(events, daemon)
    assert len(windows) == 5  # 8 s windows
    # Before the first window the wait is capped at 1 s of audio, then one wake-up a window, plus the end.
    assert daemon._blocks.wakeups <= 16, daemon._blocks.wakeups
    stop = events[-1]["counts"]
    assert set(stop["thread_cpu_seconds"]) == {"capture", "process", "infer"}
    assert sum(stop["thread_cpu_seconds"].values()) <= stop["stream_cpu_seconds"] + 0.05
    # The warm-up (until the first window's model pass) is counted apart, against the audio taken in by then.
    assert 0 < stop["warm_cpu_seconds"] <= stop["stream_cpu_seconds"]
    assert 8.0 <= stop["warm_audio_seconds"] <= 12.0
    if thread_wakeups() is not None:  # each thread's sleeps, from the kernel's count (Linux)
        wakeups = stop["thread_wakeups"]
        assert set(wakeups) == {"capture", "process", "infer"}
        assert wakeups["capture"] >= 60, wakeups  # the paced source sleeps before (nearly) each of its 120 blocks
        assert wakeups["process"] < wakeups["capture"], wakeups  # woken a window at a time, not a block


class FailingBackend(OnnxBackend):
    calls = 0

    def run_all(self, windows: np.ndarray) -> dict[str, np.ndarray]:
        FailingBackend.calls += 1
        if FailingBackend.calls >= 3:
            raise RuntimeError("the accelerator went away")
        return super().run_all(windows)


def test_an_inference_failure_ends_the_daemon_with_a_failure_status(bundle: Path, shared_data: Path) -> None:
    """Exit status 0 here would keep systemd's Restart=on-failure from restarting the daemon."""
    sink = CollectSink()
    config = DaemonConfig(bundle=bundle, source="file:-", sinks=[], hop_seconds=1.0, max_batch=1)
    source = FileSource(name="f", path=shared_data / "icbhi-sample" / "104_1b1_Al_sc_Litt3200.wav")
    daemon = Daemon(config, source=source, sinks=[sink], backend_factory=lambda b, c: FailingBackend("f", b, 1))
    assert daemon.run() == 1
    errors = [e for e in sink.events if e["type"] == "error"]
    assert errors and errors[0]["where"] == "inference" and "accelerator went away" in errors[0]["message"]
    assert sink.events[-1]["type"] == "stop"


def test_a_full_disk_drops_events_visibly_and_shuts_down_cleanly(bundle: Path, shared_data: Path) -> None:
    """/dev/full: every write fails with ENOSPC. Events are counted as dropped, the sink reports it in its
    health, the other sinks get everything, and the daemon still stops cleanly."""
    full = open_sink("jsonl:/dev/full")
    collect = CollectSink()
    config = DaemonConfig(bundle=bundle, source="file:-", sinks=[], hop_seconds=2.0)
    source = FileSource(name="f", path=shared_data / "icbhi-sample" / "104_1b1_Al_sc_Litt3200.wav")
    daemon = Daemon(config, source=source, sinks=[full, collect])
    assert daemon.run() == 0
    health = full.health()
    assert health.dropped == len(collect.events) > 5 and health.degraded and not health.connected
    assert "No space left" in (health.last_error or "")
    assert full.stats()["lines"] == 0


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--hop", "0.333"], "multiple of 0.01 s"),
        (["--hop", "nan"], "multiple of 0.01 s"),
        (["--hop", "9"], "longer than the bundle's"),
        (["--http", "99999"], "not between 0 and 65535"),
        (["--sink", "jsonl:{tmp}/e.jsonl?max_mb=-1"], "max_mb must be at least"),
        (["--sink", "jsonl:{tmp}/e.jsonl?backups=-2"], "backups must be 0 or more"),
        (["--sink", "jsonl:/proc/version/events.jsonl"], "cannot open the file"),
        (["--sink", "mqtt://127.0.0.1:{closed}/ward"], "unreachable"),
        (["--http", "127.0.0.1:{busy}"], "cannot listen on"),
    ],
)
def test_check_refuses_what_the_run_would_fail_on(
    flags: list[str], expected: str, bundle: Path, shared_data: Path, tmp_path: Path
) -> None:
    with socket.socket() as busy, socket.socket() as closed:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        closed.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        ports = {"busy": busy.getsockname()[1], "closed": closed.getsockname()[1], "tmp": tmp_path}
        wav = shared_data / "icbhi-sample" / "104_1b1_Al_sc_Litt3200.wav"
        args = ["daemon", "--check", "--bundle", str(SHIPPED_BUNDLE), "--source", f"file:{wav}"]
        args += [f.format(**ports) for f in flags]
        done = subprocess.run([sys.executable, "-m", "qlung_edge.cli", *args], capture_output=True, text=True,
                              timeout=120)  # fmt: skip
    assert done.returncode == 2 and expected in done.stderr, done.stderr + done.stdout


def test_reload_refuses_a_bundle_that_verifies_but_cannot_run(shared_data: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(SHIPPED_BUNDLE, broken)
    shutil.copy(broken / "frontend.fft.onnx", broken / "network.onnx")  # a graph that takes waveforms, not frames
    manifest = json.loads((broken / "manifest.json").read_text())
    write_manifest(broken, {k: v for k, v in manifest.items() if k not in ("files", "manifest_sha256")})
    load_bundle(broken)  # it verifies
    current = tmp_path / "current"
    current.symlink_to(SHIPPED_BUNDLE)
    sink = CollectSink()
    wav = shared_data / "sprsound" / "test_wav" / "40890405_3.3_0_p1_3652.wav"
    config = DaemonConfig(bundle=current, source="file", sinks=[], hop_seconds=1.0)
    daemon = Daemon(config, source=FileSource(name="f", path=wav, realtime=True, speed=4), sinks=[sink])
    runner = threading.Thread(target=daemon.run)
    runner.start()
    deadline = time.monotonic() + 30
    while not any(e["type"] == "window" for e in list(sink.events)) and time.monotonic() < deadline:
        time.sleep(0.05)
    current.unlink()
    current.symlink_to(broken)
    daemon.reload()
    runner.join(60)
    reloads = [e for e in sink.events if e["type"] == "reload"]
    assert len(reloads) == 1 and not reloads[0]["ok"], reloads
    windows = _windows(sink.events)
    after = [w for w in windows if w["seq"] > reloads[0]["seq"]]
    assert after and all(w["status"] != "dropped" for w in after), "the old bundle kept classifying"
    assert sink.events[-1]["type"] == "stop" and daemon.bundle.path == current


def test_a_sighup_during_start_up_is_a_reload_not_death(shared_data: Path, tmp_path: Path) -> None:
    """Before, a SIGHUP in the first second (handlers not yet installed) killed the daemon: a clean exit to
    systemd."""
    events = tmp_path / "events.jsonl"
    wav = shared_data / "sprsound" / "test_wav" / "40890405_3.3_0_p1_3652.wav"
    process = subprocess.Popen(
        [sys.executable, "-m", "qlung_edge.cli", "daemon", "--bundle", str(SHIPPED_BUNDLE), "--source",
         f"file:{wav}", "--sink", f"jsonl:{events}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    # As soon as the process catches SIGHUP at all (SigCgt), it is still importing and loading the bundle.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = Path(f"/proc/{process.pid}/status").read_text()
        caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt")), 16)
        if caught & (1 << (signal.SIGHUP - 1)):
            break
        time.sleep(0.002)
    assert not events.exists(), "SIGHUP is caught before the bundle and the sinks are opened"
    process.send_signal(signal.SIGHUP)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    kinds = [json.loads(line)["type"] for line in events.read_text().splitlines()]
    assert kinds.count("reload") == 1 and kinds[-1] == "stop" and "window" in kinds


def test_mqtt_buffer_overflow_is_counted_in_health_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # nothing listens: the broker is away
        sink = open_sink(f"mqtt://127.0.0.1:{closed.getsockname()[1]}/ward?buffer=3")
        try:
            with caplog.at_level("ERROR", logger="qlung_edge.sinks"):
                for i in range(10):
                    sink.send({"type": "window", "seq": i})
            health = sink.health()
        finally:
            sink._client.loop_stop()  # type: ignore[attr-defined]
    assert (health.dropped, health.buffered, health.degraded) == (7, 3, True)
    assert len([r for r in caplog.records if "dropping the oldest" in r.getMessage()]) == 1


def test_reloads_while_audio_flows_never_lose_frames(shared_data: Path, tmp_path: Path) -> None:
    """SIGHUP swaps the front end from the inference thread while the processing thread appends audio: the
    incremental frame ring must never miss a block (the soak benchmark found "frames ... are not in the ring")."""
    wav = _long_recording(shared_data, tmp_path / "long.wav", 90)
    sink = CollectSink()
    config = DaemonConfig(bundle=SHIPPED_BUNDLE, source="file", sinks=[], hop_seconds=1.0)
    source = FileSource(name="f", path=wav, realtime=True, speed=30, block_seconds=0.02)
    daemon = Daemon(config, source=source, sinks=[sink])
    assert daemon.backend.frontend is not None, "the shipped bundle runs incrementally"
    done = threading.Event()

    def reload_often() -> None:
        while not done.is_set():
            daemon.reload()
            time.sleep(0.01)

    hammer = threading.Thread(target=reload_often)
    hammer.start()
    try:
        status = daemon.run()
    finally:
        done.set()
        hammer.join()
    reloads = [e for e in sink.events if e["type"] == "reload"]
    assert status == 0 and not [e for e in sink.events if e["type"] == "error"], daemon._errors
    assert len(reloads) > 10 and all(e["ok"] for e in reloads)  # ~30 on an idle 2-core box, 19 under load
    _accounted(sink.events, daemon)
