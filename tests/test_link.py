"""The link protocol: C and Python agree, the decoder survives anything, the receiver keeps time."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from firmware_bridge.link import LinkReceiver
from firmware_bridge.protocol import (
    MAX_PAYLOAD,
    Command,
    DeviceInfo,
    FrameDecoder,
    FrameType,
    SampleFormat,
    Status,
    crc16,
    encode_audio,
    encode_command,
    encode_frame,
)
from qlung_edge.audio import read_audio

REPO = Path(__file__).resolve().parents[1]
C_DIR = REPO / "firmware_bridge" / "c"


@pytest.fixture(scope="module")
def link_tool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.fail("no C compiler (scripts/setup.sh installs gcc)")
    out = tmp_path_factory.mktemp("c") / "link_tool"
    subprocess.run(
        [
            compiler,
            "-std=c99",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-O2",
            f"-I{C_DIR}",
            str(REPO / "tests" / "c" / "link_tool.c"),
            str(C_DIR / "qlung_link.c"),
            "-o",
            str(out),
        ],
        check=True,
    )
    return out


def run_tool(tool: Path, *args: object, data: bytes = b"") -> bytes:
    return subprocess.run([str(tool), *map(str, args)], input=data, capture_output=True, check=True).stdout


def test_crc_is_ccitt_false_in_python_and_c(link_tool: Path) -> None:
    assert crc16(b"123456789") == 0x29B1
    rng = np.random.default_rng(0)
    for size in (0, 1, 17, 4116):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        assert int(run_tool(link_tool, "crc", data=data), 16) == crc16(data)


def _stream(frames: list[bytes]) -> bytes:
    return b"".join(frames)


@pytest.mark.parametrize("fmt", list(SampleFormat))
@pytest.mark.parametrize("channels", [1, 2])
def test_python_round_trip_every_format(fmt: SampleFormat, channels: int) -> None:
    rng = np.random.default_rng(1)
    samples = np.clip(rng.normal(0, 0.3, (200, channels)), -1, 0.999)
    frame = encode_audio(samples, 65535, 123, 44_100, fmt)
    (decoded,) = FrameDecoder().feed(frame)
    assert (decoded.sequence, decoded.timestamp_us, decoded.sample_rate, decoded.channels) == (
        65535,
        123,
        44_100,
        channels,
    )
    tolerance = {SampleFormat.INT16: 1 / 32768, SampleFormat.INT24: 1 / 2**23, SampleFormat.FLOAT32: 1e-7}[fmt]
    np.testing.assert_allclose(decoded.samples(), samples, atol=tolerance)


def test_protocol_md_example_is_what_the_encoder_writes() -> None:
    text = (REPO / "firmware_bridge" / "PROTOCOL.md").read_text()
    example = text.split("```")[-2].strip()
    assert bytes.fromhex(example) == encode_audio(np.array([1, -2]) / 32768, 7, 224_000, 8000)


def test_c_encoder_round_trips_a_real_recording(link_tool: Path, shared_data: Path) -> None:
    audio = read_audio(shared_data / "icbhi-sample" / "104_1b1_Al_sc_Litt3200.wav")
    ints = np.round(audio.samples * 32768).clip(-32768, 32767).astype("<i2")
    stream = run_tool(link_tool, "encode16", 65530, audio.sample_rate, 1, 240, data=ints.tobytes())
    decoder = FrameDecoder()
    frames = []
    for start in range(0, len(stream), 1000):  # chunked like a serial port
        frames += decoder.feed(stream[start : start + 1000])
    assert decoder.counters.crc_errors == 0 and decoder.counters.garbage_bytes == 0
    assert [f.sequence for f in frames] == [(65530 + i) % 65536 for i in range(len(frames))]
    assert frames[3].timestamp_us == (3 * 240 * 1_000_000 // audio.sample_rate)
    decoded = np.concatenate([f.samples()[:, 0] for f in frames])
    np.testing.assert_array_equal(np.round(decoded * 32768).astype(np.int16), ints)


def test_c_encoder_int24_stereo(link_tool: Path) -> None:
    rng = np.random.default_rng(2)
    ints = rng.integers(-(2**23), 2**23, (300, 2)).astype("<i4")
    stream = run_tool(link_tool, "encode24", 0, 48_000, 2, 100, data=ints.tobytes())
    frames = FrameDecoder().feed(stream)
    assert len(frames) == 3 and all(f.sample_format is SampleFormat.INT24 for f in frames)
    decoded = np.concatenate([f.samples() for f in frames])
    np.testing.assert_array_equal(np.round(decoded * 2**23).astype(np.int64), ints)


def test_c_parser_reads_python_commands_through_noise(link_tool: Path) -> None:
    good = [encode_command(Command.START, 1), encode_command(Command.SET_GAIN, 2, b"\x00\x00\xa0\x40")]
    corrupted = bytearray(encode_command(Command.STOP, 3))
    corrupted[-3] ^= 0x10  # the command byte: only the CRC can tell
    stream = b"\x00\xa5garbage\xa5\x5a\x07" + good[0] + bytes(corrupted) + b"\xa5" + good[1]
    lines = run_tool(link_tool, "parse", data=stream).decode().split("\n")
    assert lines[0] == "2 1 1 01"
    assert lines[1] == "2 2 5 030000a040"
    assert lines[2] == "crc_errors 1"


def test_c_reply_decodes_as_device_info(link_tool: Path) -> None:
    info = DeviceInfo(8000, SampleFormat.INT16, 1, -3.5, "Thinklabs One")
    reply = run_tool(link_tool, "reply", 42, int(Command.QUERY_INFO), int(Status.OK), data=info.to_bytes())
    (frame,) = FrameDecoder().feed(reply)
    assert frame.kind is FrameType.REPLY and frame.sequence == 42
    assert frame.payload[:2] == bytes([Command.QUERY_INFO, Status.OK])
    assert DeviceInfo.from_bytes(frame.payload[2:]) == info


def test_oversized_payload_and_bad_samples_are_refused() -> None:
    from firmware_bridge.protocol import ProtocolError

    with pytest.raises(ProtocolError, match="exceeds"):
        encode_frame(FrameType.AUDIO, 0, bytes(MAX_PAYLOAD + 1))
    with pytest.raises(ProtocolError, match="NaN"):
        encode_audio(np.array([0.0, np.nan]), 0, 0, 8000)


# --- the decoder against anything -------------------------------------------------------


def _valid_frames(count: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        fmt = SampleFormat(int(rng.integers(1, 4)))
        n = int(rng.integers(1, 64))
        out.append(encode_audio(rng.uniform(-1, 1, n), i, i * 1000, 8000, fmt))
    return out


FUZZ_EXAMPLES = int(os.environ.get("QLUNG_FUZZ_EXAMPLES", "0"))
"""scripts/fuzz.sh raises the example counts of the property tests (the unit suite keeps them small)."""


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


@settings(max_examples=FUZZ_EXAMPLES or 300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000), st.lists(st.integers(0, 10_000), max_size=20))
def test_arbitrary_bytes_never_crash_or_yield_a_bad_frame(data: bytes, cuts: list[int]) -> None:
    decoder = FrameDecoder()
    frames = [f for chunk in _chunks(data, cuts) for f in decoder.feed(chunk)] + decoder.flush()
    for frame in frames:  # anything delivered is a real frame of the input, CRC included
        reencoded = encode_frame(
            frame.kind, frame.sequence, frame.payload, frame.timestamp_us, frame.sample_rate,
            frame.sample_format or 0, frame.channels,
        )  # fmt: skip
        assert reencoded in data
    assert decoder.counters.bytes == len(data)


@settings(max_examples=FUZZ_EXAMPLES or 200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(0, 10_000),
    st.lists(st.tuples(st.sampled_from(["flip", "delete", "insert", "sync"]), st.integers(0, 10**6)), max_size=12),
    st.lists(st.integers(0, 10**6), max_size=30),
)
@example(seed=5185, damage=[("flip", 0)] * 4 + [("flip", 76530)], cuts=[])  # frames 7-11 behind a bad length
@example(seed=7109, damage=[("flip", 0), ("delete", 0), ("delete", 0), ("flip", 0)], cuts=[])  # frame 0 deleted whole
def test_corrupted_streams_keep_every_intact_frame(seed: int, damage: list[tuple[str, int]], cuts: list[int]) -> None:
    frames = _valid_frames(12, seed)
    pieces = [bytearray(f) for f in frames]
    touched = set()
    rnd = random.Random(seed)
    for kind, where in damage:
        index = where % len(pieces)
        piece = pieces[index]
        if not piece:  # deleted whole by an earlier step: nothing left to damage
            continue
        offset = (where // len(pieces)) % len(piece)
        if kind == "flip":
            piece[offset] ^= 1 << rnd.randrange(8)
            touched.add(index)
        elif kind == "delete":
            del piece[offset : offset + rnd.randint(1, 20)]
            touched.add(index)
        else:  # garbage, possibly starting with a sync word, inserted after the frame
            noise = bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1, 40)))
            pieces[index] = piece + (b"\xa5\x5a" if kind == "sync" else b"") + noise
    stream = b"".join(bytes(p) for p in pieces)
    decoder = FrameDecoder()
    decoded = [f for chunk in _chunks(stream, cuts) for f in decoder.feed(chunk)] + decoder.flush()
    sequences = [f.sequence for f in decoded]
    intact = [i for i in range(len(frames)) if i not in touched]
    assert set(intact) <= set(sequences), "an untouched frame was lost"
    for frame in decoded:
        assert frames[frame.sequence] in stream  # only whole, valid frames come out
    assert decoder.counters.frames == len(decoded)


def test_decoder_throughput_is_measured_not_asserted() -> None:
    """Smoke check of the figure the bench reports: the decoder digests a stream whole."""
    stream = b"".join(_valid_frames(500, 3)) * 4
    decoder = FrameDecoder()
    frames = [f for start in range(0, len(stream), 4096) for f in decoder.feed(stream[start : start + 4096])]
    assert len(frames) == 2000 and decoder.counters.crc_errors == 0


# --- from frames to a timeline -------------------------------------------------------------


def _frames(n: int, per: int = 100, rate: int = 8000, start: int = 0) -> tuple[list[bytes], np.ndarray]:
    rng = np.random.default_rng(start)
    audio = np.round(rng.uniform(-0.5, 0.5, n * per) * 32768) / 32768
    frames = [
        encode_audio(audio[i * per : (i + 1) * per], start + i, i * per * 125, rate) for i in range(n)
    ]  # fmt: skip
    return frames, audio


def _timeline(blocks: list, length: int) -> tuple[np.ndarray, np.ndarray]:
    audio = np.full(length, np.nan)
    gap = np.zeros(length, bool)
    for b in blocks:
        i = round(b.timestamp * b.sample_rate)
        audio[i : i + len(b.samples)] = b.samples
        gap[i : i + len(b.samples)] = b.gap
    return audio, gap


def test_lost_frames_become_flagged_silence_of_the_right_length() -> None:
    frames, audio = _frames(20)
    receiver = LinkReceiver(reorder_depth=2)
    stream = b"".join(f for i, f in enumerate(frames) if i not in (5, 6, 12))
    blocks = receiver.feed(stream) + receiver.flush()
    timeline, gap = _timeline(blocks, len(audio))
    assert receiver.counters.gaps == 2 and receiver.counters.lost_frames == 3
    assert gap.sum() == 300 and gap[500:700].all() and gap[1200:1300].all()
    np.testing.assert_array_equal(timeline[~gap], audio[~gap])
    assert sum(len(b.samples) for b in blocks) == len(audio)


def test_reordered_frames_are_put_back_and_duplicates_dropped() -> None:
    frames, audio = _frames(10)
    order = [0, 1, 3, 2, 4, 4, 5, 7, 6, 8, 9, 9]
    receiver = LinkReceiver(reorder_depth=2)
    blocks = receiver.feed(b"".join(frames[i] for i in order)) + receiver.flush()
    timeline, gap = _timeline(blocks, len(audio))
    assert not gap.any()
    np.testing.assert_array_equal(timeline, audio)
    assert receiver.counters.reordered == 2 and receiver.counters.duplicates == 2


def test_a_frame_later_than_the_reorder_window_is_dropped_not_spliced() -> None:
    frames, audio = _frames(10)
    order = [0, 1, 3, 4, 5, 6, 2, 7, 8, 9]
    receiver = LinkReceiver(reorder_depth=2)
    blocks = receiver.feed(b"".join(frames[i] for i in order)) + receiver.flush()
    _, gap = _timeline(blocks, len(audio))
    assert receiver.counters.late == 1 and gap[200:300].all() and gap.sum() == 100


def test_sample_rate_change_and_device_restart() -> None:
    receiver = LinkReceiver()
    first = [encode_audio(np.zeros(80), i, 0, 8000) for i in range(3)]
    second = [encode_audio(np.full(160, 0.25), 3 + i, 0, 16_000, SampleFormat.FLOAT32) for i in range(2)]
    restart = [encode_audio(np.full(160, 0.5), 40_000 + i, 0, 16_000, SampleFormat.FLOAT32) for i in range(2)]
    blocks = receiver.feed(b"".join(first + second + restart))
    assert [b.sample_rate for b in blocks] == [8000] * 3 + [16_000] * 4
    assert receiver.counters.format_changes == 1 and receiver.counters.restarts == 1
    assert [b.discontinuity for b in blocks] == [False] * 5 + [True, False]
    assert blocks[3].timestamp == pytest.approx(3 * 80 / 8000)
