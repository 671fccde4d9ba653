"""The capture-to-processing hand-over: woken when a window is due, blocks joined without changing a window."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from firmware_bridge.blocks import AudioBlock
from qlung_edge.handoff import BlockQueue, ExamRequest, joined
from qlung_edge.quality import QualityConfig
from qlung_edge.streaming import SignalPath


def _blocks(count: int, size: int = 800, rate: int = 8000, seed: int = 0) -> list[AudioBlock]:
    rng = np.random.default_rng(seed)
    return [
        AudioBlock((0.05 * rng.standard_normal(size)).astype(np.float32), rate, i * size / rate) for i in range(count)
    ]


def test_the_consumer_gets_nothing_until_the_audio_it_wants_has_queued() -> None:
    queue = BlockQueue(capacity=64, max_wait_seconds=1.0)
    blocks = _blocks(10)
    for block in blocks[:4]:
        queue.put(block)
    started = time.monotonic()
    assert queue.get(timeout=0.05, wanted_seconds=0.5) == blocks[:4]  # timed out: what there is
    assert time.monotonic() - started >= 0.04
    got: list[list[AudioBlock | None]] = []
    consumer = threading.Thread(target=lambda: got.append(queue.get(timeout=5.0, wanted_seconds=0.5)))
    consumer.start()
    for block in blocks[4:8]:
        time.sleep(0.01)
        queue.put(block)
    consumer.join(timeout=0.2)
    assert consumer.is_alive() and not got  # 0.4 s queued of the 0.5 wanted: still asleep
    queue.put(blocks[8])
    consumer.join(timeout=5)
    assert got == [blocks[4:9]] and queue.wakeups == 2


def test_the_end_and_the_wait_cap_wake_the_consumer_at_once() -> None:
    queue = BlockQueue(capacity=64, max_wait_seconds=0.2)
    blocks = _blocks(3)
    for block in blocks[:2]:
        queue.put(block)
    started = time.monotonic()
    assert queue.get(timeout=5.0, wanted_seconds=4.0) == blocks[:2]  # 0.2 s queued: the cap, not the 4 s wanted
    queue.put(blocks[2])
    queue.put(None)
    assert queue.get(timeout=5.0, wanted_seconds=4.0) == [blocks[2], None]
    assert time.monotonic() - started < 1.0


def test_a_full_queue_makes_the_producer_wait_and_tiny_blocks_are_handed_over_early() -> None:
    queue = BlockQueue(capacity=4, max_wait_seconds=10.0)
    tiny = _blocks(6, size=1)
    producer = threading.Thread(target=lambda: [queue.put(b) for b in tiny])
    producer.start()
    first = queue.get(timeout=5.0, wanted_seconds=10.0)  # half the capacity queued: handed over
    assert 2 <= len(first) <= 4
    rest: list[AudioBlock | None] = []
    while len(first) + len(rest) < 6:
        rest += queue.get(timeout=0.2, wanted_seconds=10.0)
    producer.join(timeout=5)
    assert first + rest == tiny
    with pytest.raises(ValueError, match="capacity"):
        BlockQueue(capacity=0)


def test_joined_blocks_hold_the_same_samples_and_keep_flagged_blocks_apart() -> None:
    blocks = _blocks(12)
    gap = AudioBlock(np.zeros(800, np.float32), 8000, 0.4, gap=True)
    bad = AudioBlock(np.r_[np.zeros(799), np.nan].astype(np.float32), 8000, 0.5)
    restart = AudioBlock(np.zeros(800, np.float32), 8000, 0.0, discontinuity=True)
    faster = AudioBlock(np.zeros(1600, np.float32), 16000, 0.8)
    stream: list[AudioBlock | None] = [*blocks[:4], gap, bad, blocks[6], restart, faster, *blocks[9:], None]
    out = joined(stream)
    assert out[1:5] == [gap, bad, blocks[6], restart] and out[5] is faster and out[-1] is None
    first, last = out[0], out[6]
    assert first is not None and last is not None
    np.testing.assert_array_equal(first.samples, np.concatenate([b.samples for b in blocks[:4]]))
    assert (first.timestamp, first.sample_rate) == (0.0, 8000)
    assert last.timestamp == blocks[9].timestamp and len(last.samples) == 3 * 800
    assert joined([blocks[0], blocks[2]]) == [blocks[0], blocks[2]]  # not back to back: not joined


def test_the_signal_path_gives_the_same_windows_for_joined_blocks() -> None:
    blocks = _blocks(100, seed=3)  # 10 s at 8 kHz in 0.1 s blocks
    outputs = []
    for stream in (blocks, joined([*blocks])):
        path = SignalPath(4 * 16000, 16000, QualityConfig())
        outputs.append([d for b in stream if b is not None for d in path.push(b)] + path.finish())
    one, other = ([(o.window.index, o.window.end, o.reasons) for o in out if hasattr(o, "window")] for out in outputs)
    assert one == other and len(one) == 7
    windows = [[o.window.samples for o in out if hasattr(o, "window")] for out in outputs]
    np.testing.assert_allclose(np.stack(windows[0]), np.stack(windows[1]), atol=1e-6)


def test_a_control_message_is_handed_over_at_once_in_its_place_among_the_blocks() -> None:
    queue = BlockQueue(capacity=2, max_wait_seconds=10.0)
    blocks = _blocks(2)
    queue.put(blocks[0])
    queue.put(blocks[1])  # full now: a block would wait, a control message does not
    request = ExamRequest(True, "control message", {"patient": "P-7"})
    queue.put(request)
    started = time.monotonic()
    items = queue.get(timeout=5.0, wanted_seconds=10.0)
    assert items == [*blocks, request] and time.monotonic() - started < 1.0
    audio, last = joined(items)
    assert last is request and isinstance(audio, AudioBlock) and len(audio.samples) == 1600
