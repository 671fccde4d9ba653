"""Audio sources, end to end where it can be real: a pty stethoscope and a PortAudio stream."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from firmware_bridge.blocks import AudioBlock
from firmware_bridge.link import LinkReceiver
from firmware_bridge.simulator import DeviceSimulator, Impairments
from firmware_bridge.sources import SourceError, open_source
from qlung_edge.audio import read_audio
from qlung_edge.errors import AudioFileError

RECORDING = "104_1b1_Al_sc_Litt3200.wav"  # 4 kHz, 16-bit, 15.9 s


def _place(blocks: list[AudioBlock], length: int) -> tuple[np.ndarray, np.ndarray]:
    audio = np.full(length, np.nan, dtype=np.float32)
    gap = np.zeros(length, bool)
    for b in blocks:
        i = round(b.timestamp * b.sample_rate)
        n = min(len(b.samples), length - i)
        audio[i : i + n] = b.samples[:n]
        gap[i : i + n] = b.gap
    return audio, gap


def test_file_source_streams_the_file_at_its_native_rate(shared_data: Path) -> None:
    path = shared_data / "icbhi-sample" / "103_2b2_Ar_mc_LittC2SE.wav"  # 44.1 kHz
    reference = read_audio(path)
    source = open_source(f"file:{path}")
    blocks = list(source.blocks())
    assert {b.sample_rate for b in blocks} == {44_100}
    np.testing.assert_array_equal(np.concatenate([b.samples for b in blocks]), reference.samples)
    assert blocks[5].timestamp == pytest.approx(5 * 4410 / 44_100)


def test_file_source_downmixes_with_a_note_and_paces_in_real_time(tmp_path: Path) -> None:
    stereo = np.stack([np.full(8000, 0.5), np.full(8000, -0.1)], axis=1)
    sf.write(tmp_path / "s.wav", stereo, 8000, subtype="PCM_24")
    source = open_source(f"file:{tmp_path / 's.wav'}", realtime=True, speed=4.0)
    start = time.monotonic()
    blocks = list(source.blocks())
    elapsed = time.monotonic() - start
    assert any("averaged to mono" in note for note in source.notes)
    np.testing.assert_allclose(np.concatenate([b.samples for b in blocks]), 0.2, atol=1e-6)
    assert elapsed >= 0.2  # 1 s of audio at 4x is at least 0.225 s of pacing


def test_file_source_stops_from_another_thread(tmp_path: Path) -> None:
    sf.write(tmp_path / "long.wav", np.zeros(8000 * 60), 8000)
    source = open_source(f"file:{tmp_path / 'long.wav'}", realtime=True)
    threading.Timer(0.3, source.stop).start()
    start = time.monotonic()
    got = sum(b.duration for b in source.blocks())
    assert time.monotonic() - start < 2 and got < 2


def test_a_paced_file_source_sees_a_stop_within_a_slice_of_a_long_block(tmp_path: Path) -> None:
    sf.write(tmp_path / "long.wav", np.zeros(8000 * 60), 8000)
    source = open_source(f"file:{tmp_path / 'long.wav'}", realtime=True, block_seconds=2.0)
    blocks = source.blocks()
    first = next(blocks)  # the first block is due at once; the next one 2 s later
    assert first.duration == 2.0
    threading.Timer(0.3, source.stop).start()
    start = time.monotonic()
    assert list(blocks) == []
    assert time.monotonic() - start < 0.3 + 0.1 + 0.15, "seen within one pacing slice of the stop"


def test_file_source_names_bad_files(tmp_path: Path) -> None:
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioFileError, match=r"empty\.wav: file is empty"):
        open_source(f"file:{tmp_path / 'empty.wav'}")
    sf.write(tmp_path / "nan.wav", np.r_[np.zeros(9000), np.nan, np.zeros(10)].astype(np.float32), 8000, "FLOAT")
    delivered: list[int] = []
    with pytest.raises(AudioFileError, match=r"nan\.wav: NaN or infinite samples near 1\.12 s"):
        for block in open_source(f"file:{tmp_path / 'nan.wav'}").blocks():
            delivered.append(len(block.samples))
    assert sum(delivered) == 8800  # every 0.1 s block before the one holding the NaN (decoded a second at a time)


@pytest.mark.parametrize(("fmt", "dtype", "scale"), [("s16le", "<i2", 32768), ("f32le", "<f4", 1.0)])
def test_stdin_source_reads_raw_pcm(fmt: str, dtype: str, scale: float) -> None:
    values = (np.arange(-500, 500) * 20).astype(dtype)
    stream = io.BytesIO(values.tobytes() + b"\x01")  # one stray byte at the end
    source = open_source("stdin:", rate=8000, format=fmt, stream=stream)
    blocks = list(source.blocks())
    np.testing.assert_allclose(np.concatenate([b.samples for b in blocks]), values / scale, rtol=1e-6)
    assert "1 bytes left over" in source.notes[-1]


def test_stdin_source_from_a_real_pipe_in_24_bit_stereo() -> None:
    read_end, write_end = os.pipe()
    rng = np.random.default_rng(0)
    ints = rng.integers(-(2**23), 2**23, (4000, 2)).astype("<i4")
    packed = ints.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()

    def writer() -> None:
        for start in range(0, len(packed), 1001):  # odd chunks split samples apart
            os.write(write_end, packed[start : start + 1001])
        os.close(write_end)

    threading.Thread(target=writer).start()
    with os.fdopen(read_end, "rb") as stream:
        blocks = list(open_source("stdin:", rate=16_000, format="s24le", channels=2, stream=stream).blocks())
    np.testing.assert_allclose(np.concatenate([b.samples for b in blocks]), ints.mean(axis=1) / 2**23, atol=1e-7)


def test_source_specs_are_checked() -> None:
    with pytest.raises(SourceError, match="unknown source"):
        open_source("usb:3")
    with pytest.raises(SourceError, match="needs its sample rate"):
        open_source("stdin:")
    with pytest.raises(SourceError, match="do not apply"):
        open_source("file:x.wav", rate=8000)
    with pytest.raises(SourceError, match="serial: needs a port"):
        open_source("serial:")


# --- the serial link over a pseudo-terminal -------------------------------------------------


def _collect(source, simulator: DeviceSimulator | None, expected: int, timeout: float = 30) -> list[AudioBlock]:  # type: ignore[no-untyped-def]
    """Read until the whole recording has arrived, or the device finished and went quiet, or time ran out."""

    def watchdog() -> None:
        finished = simulator.wait(timeout) if simulator is not None else False
        if finished:
            time.sleep(1.0)  # let the last frames drain through the pty
        else:
            time.sleep(max(0.0, deadline - time.monotonic()))
        source.stop()

    deadline = time.monotonic() + timeout
    threading.Thread(target=watchdog, daemon=True).start()
    blocks: list[AudioBlock] = []
    got = 0
    for block in source.blocks():
        blocks.append(block)
        got += len(block.samples)
        if got >= expected:
            source.stop()
    return blocks


def test_serial_source_through_an_impaired_link_with_unplug(shared_data: Path) -> None:
    wav = shared_data / "icbhi-sample" / RECORDING
    reference = read_audio(wav).samples
    impairments = Impairments(
        bit_error_rate=2e-5, drop_rate=0.02, duplicate_rate=0.02, reorder_rate=0.02, garbage_rate=0.02, jitter_ms=4
    )
    with DeviceSimulator(wav, speed=8, impairments=impairments, seed=3) as simulator:
        source = open_source(f"serial:{simulator.path}", reconnect_seconds=0.05, receiver=LinkReceiver())
        threading.Timer(0.8, simulator.unplug, args=(0.25,)).start()
        blocks = _collect(source, simulator, len(reference))
    # The receiver's timeline starts at the first frame it received; if the device's first
    # frames were dropped, that is a whole number of frames into the recording.
    first = blocks[0].samples
    offset = next(i for i in range(0, 64 * 256, 256) if np.array_equal(reference[i : i + len(first)], first))
    reference = reference[offset:]
    audio, gap = _place(blocks, len(reference))
    stats = source.stats()
    sim = simulator.counters
    # The timeline is whole up to the last frame received (frames lost after it leave no trace):
    # every sample is either the device's own or flagged silence.
    missing = np.flatnonzero(np.isnan(audio))
    if missing.size:
        assert missing[0] == len(audio) - missing.size and missing.size <= 4 * 256
    received = ~gap & ~np.isnan(audio)
    np.testing.assert_array_equal(audio[received], reference[received])
    seen = f"receiver {stats}, device {sim.as_dict()}"
    assert stats["disconnects"] >= 1 and stats["connects"] >= 2 and sim.unplugs == 1, seen
    # Every frame the device produced is accounted for: delivered once, or concealed.
    frames = 256
    delivered = -(-received.sum() // frames)
    lost_before_first = offset // frames
    assert stats["audio_frames"] - stats["duplicates"] + stats["lost_frames"] + lost_before_first >= sim.frames - 4
    assert delivered <= sim.frames
    assert stats["decoder_crc_errors"] >= 1, seen
    assert stats["duplicates"] >= 1 and stats["gaps"] >= 1, seen
    assert source.device_info is not None and source.device_info.sample_rate == 4000


def test_a_frames_impairments_do_not_depend_on_the_frames_lost_before_it(shared_data: Path) -> None:
    """The impaired-link test above unplugs on a timer: how many frames fall into the unplug depends on load, and
    the fates of the frames after it must not."""
    impairments = Impairments(bit_error_rate=2e-5, drop_rate=0.05, duplicate_rate=0.05, garbage_rate=0.05)

    def fates_after(unplugged: range) -> dict[str, int]:
        simulator = DeviceSimulator(shared_data / "icbhi-sample" / RECORDING, impairments=impairments, seed=3)
        for number in range(100):
            if number in unplugged:
                continue
            simulator._send_impaired(bytes(64), number)  # not open: counted, written nowhere
            if number == 59:
                before = simulator.counters.as_dict()
        after = simulator.counters.as_dict()
        return {k: after[k] - before[k] for k in ("dropped", "duplicated", "corrupted", "garbage_bursts")}

    whole = fates_after(range(0))
    assert sum(whole.values()) > 0, "frames 60-99 met no impairment: the test would see nothing"
    assert fates_after(range(10, 30)) == whole


def test_simulate_device_command_streams_to_a_serial_source(shared_data: Path, tmp_path: Path) -> None:
    wav = shared_data / "icbhi-sample" / RECORDING
    link = tmp_path / "ttySTETH"
    process = subprocess.Popen(
        [sys.executable, "-m", "qlung_edge.cli", "simulate-device", str(wav), "--link", str(link), "--speed", "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline() if process.stdout else ""
        assert line.startswith(f"connect to: {link}")
        source = open_source(f"serial:{link}")
        reference = read_audio(wav).samples
        blocks = _collect(source, None, len(reference))  # type: ignore[arg-type]
        audio, gap = _place(blocks, len(reference))
        assert not gap.any()
        np.testing.assert_array_equal(audio, reference)
        _, err = process.communicate(timeout=20)
        assert process.returncode == 0 and "dropped=0" in err
    finally:
        process.kill()


# --- a real PortAudio stream: pulseaudio null sink, paplay in, sounddevice out ----------------


@pytest.fixture(scope="module")
def pulse_sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if shutil.which("pulseaudio") is None or shutil.which("paplay") is None:
        pytest.skip("pulseaudio/paplay not installed (scripts/setup.sh installs them)")
    runtime = tmp_path_factory.mktemp("pulse")
    env = {**os.environ, "PULSE_RUNTIME_PATH": str(runtime), "HOME": str(runtime)}
    sink = "qlung_test"
    server = subprocess.Popen(
        [
            "pulseaudio",
            "-n",
            "--daemonize=no",
            "--exit-idle-time=-1",
            "--disallow-exit",
            "--log-target=stderr",
            "--load=module-native-protocol-unix",
            f"--load=module-null-sink sink_name={sink}",
        ],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    old = {k: os.environ.get(k) for k in ("PULSE_RUNTIME_PATH", "PULSE_SERVER")}
    os.environ["PULSE_RUNTIME_PATH"] = str(runtime)
    os.environ["PULSE_SERVER"] = f"unix:{runtime / 'native'}"
    try:
        for _ in range(100):
            if subprocess.run(["pactl", "info"], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            pytest.fail("pulseaudio did not start")
        subprocess.run(["pactl", "set-default-source", f"{sink}.monitor"], check=True)
        subprocess.run(["pactl", "set-default-sink", sink], check=True)
        yield sink
    finally:
        server.terminate()
        server.wait(timeout=10)
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_mic_source_captures_a_real_recording_played_into_pulseaudio(shared_data: Path, pulse_sink: str) -> None:
    from scipy.signal import correlate

    from qlung_edge.audio import resample

    wav = shared_data / "icbhi-sample" / RECORDING
    reference = read_audio(wav)
    source = open_source("mic:pulse")
    assert source.sample_rate == 44_100  # the device's native rate, not 16 kHz
    blocks: list[AudioBlock] = []

    def play() -> None:
        time.sleep(0.3)
        subprocess.run(["paplay", f"--device={pulse_sink}", str(wav)], check=True, timeout=60)
        time.sleep(0.5)
        source.stop()

    player = threading.Thread(target=play)
    player.start()
    blocks = list(source.blocks())
    player.join()
    captured = np.concatenate([b.samples for b in blocks])
    assert source.stats()["lost_samples"] == 0
    down = resample(captured, 44_100, reference.sample_rate)
    x = reference.samples
    xc = correlate(down, x, mode="full", method="fft")
    lag = int(np.argmax(np.abs(xc))) - (len(x) - 1)
    aligned = down[max(lag, 0) : max(lag, 0) + len(x)]
    x = x[max(-lag, 0) :]
    n = min(len(aligned), len(x))
    assert n > 0.9 * len(reference.samples), "most of the recording should have been captured"
    aligned, x = aligned[:n], x[:n]
    corr = float(np.corrcoef(aligned, x)[0, 1])
    level_db = 20 * np.log10(np.std(aligned) / np.std(x))
    print(f"capture: lag {lag / reference.sample_rate * 1000:.1f} ms, correlation {corr:.4f}, level {level_db:+.2f} dB")
    assert corr > 0.95
    assert abs(level_db) < 1.0


def test_simulator_refuses_bad_options_and_paces_every_loop(shared_data: Path, tmp_path: Path) -> None:
    wav = shared_data / "icbhi-sample" / RECORDING
    done = subprocess.run(
        [sys.executable, "-m", "qlung_edge.cli", "simulate-device", str(wav), "--frame-samples", "-5"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and "frame samples must be a positive whole number" in done.stderr
    short = tmp_path / "short.wav"
    sf.write(short, np.zeros(800, np.float32), 4000)  # 0.2 s a pass
    with DeviceSimulator(short, speed=1.0, loop=True, autostart=True) as simulator:
        time.sleep(1.0)
        frames = simulator.counters.frames
    # Paced at real time: about 1 s of audio (4000 samples / 256 a frame ≈ 16 frames), not thousands of loops.
    assert 8 <= frames <= 30, f"{frames} frames in 1 s"


def test_capture_reports_a_level_for_a_stream_with_nan_samples() -> None:
    samples = (0.1 * np.sin(np.arange(8000) / 5)).astype("<f4")
    samples[100:200] = np.nan
    done = subprocess.run(
        [sys.executable, "-m", "qlung_edge.cli", "capture", "stdin:", "--rate", "8000", "--format", "f32le",
         "--seconds", "1"],
        input=samples.tobytes(), capture_output=True, timeout=60,
    )  # fmt: skip
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()
    assert "nan dBFS" not in out and "-23.0 dBFS (100 NaN/inf samples left out)" in out, out


def test_the_daemon_reports_an_unplugged_stethoscope_while_it_happens(shared_data: Path) -> None:
    """Before, disconnect and reconnect reached the sinks only when the daemon stopped."""
    from qlung_edge.classifier import SHIPPED_BUNDLE
    from qlung_edge.daemon import Daemon, DaemonConfig
    from qlung_edge.sinks import CollectSink

    wav = shared_data / "sprsound" / "test_wav" / "40890405_3.3_0_p1_3652.wav"
    with DeviceSimulator(wav, speed=2, loop=True) as simulator:
        sink = CollectSink()
        source = open_source(f"serial:{simulator.path}", reconnect_seconds=0.05, receiver=LinkReceiver())
        daemon = Daemon(DaemonConfig(bundle=SHIPPED_BUNDLE, source="serial", sinks=[]), source=source, sinks=[sink])
        runner = threading.Thread(target=daemon.run)
        runner.start()
        try:
            deadline = time.monotonic() + 30
            while not any(e["type"] == "window" for e in list(sink.events)) and time.monotonic() < deadline:
                time.sleep(0.05)
            simulator.unplug(1.0)
            notes: list[str] = []
            while time.monotonic() < deadline and not any("reconnected" in n for n in notes):
                notes = [e["note"] for e in list(sink.events) if e["type"] == "source"]
                time.sleep(0.05)
            assert any("disconnected" in n for n in notes) and any("reconnected" in n for n in notes), notes
            assert all(e["type"] != "stop" for e in sink.events), "reported while running"
        finally:
            daemon.stop()
            runner.join(30)
