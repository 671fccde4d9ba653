"""The on-disk spool: nothing undelivered is lost across an outage or a restart, in order, within its bound."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Broker

from qlung_edge.sinks import JsonLinesSink, open_sink
from qlung_edge.spool import SEGMENT_SUFFIX, Spool, SpoolError


def _event(seq: int, pad: int = 0) -> dict[str, Any]:
    return {"schema": 3, "type": "window", "stream": "s", "run_id": "r", "seq": seq, "time": 0.0, "pad": "x" * pad}


def test_undelivered_events_come_back_in_order_after_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", ack_seconds=0)
    ids = [spool.append(json.dumps(_event(i)))[0] for i in range(5)]
    assert ids == [0, 1, 2, 3, 4]
    for number in (0, 1, 3):
        spool.ack(number)
    spool.close()
    again = Spool(tmp_path / "spool")
    assert [json.loads(r.payload)["seq"] for r in again.pending()] == [2, 4]
    assert again.append(json.dumps(_event(5)))[0] == 5, "ids go on where the last run stopped"
    again.close()


def test_a_crash_replays_rather_than_loses(tmp_path: Path) -> None:
    """Acknowledgements are written at most every ack_seconds: a crash (no close) repeats, never loses."""
    spool = Spool(tmp_path / "spool", ack_seconds=3600)
    for i in range(4):
        spool.append(json.dumps(_event(i)))
    spool.ack(0)
    spool.ack(1)
    spool._lock_file.close()  # the process died: the lock goes with it, nothing else is written
    after = Spool(tmp_path / "spool")
    assert [json.loads(r.payload)["seq"] for r in after.pending()] == [0, 1, 2, 3]
    after.close()


def test_a_line_cut_short_is_left_out(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    for i in range(3):
        spool.append(json.dumps(_event(i)))
    spool.close()
    segment = next((tmp_path / "spool").glob(f"*{SEGMENT_SUFFIX}"))
    segment.write_bytes(segment.read_bytes()[:-9])  # power lost while the last event was written
    after = Spool(tmp_path / "spool")
    assert [json.loads(r.payload)["seq"] for r in after.pending()] == [0, 1]
    assert after.skipped_lines == 1
    after.close()


def test_the_spool_is_bounded_and_drops_the_oldest_counted(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=8192)
    dropped: list[int] = []
    for i in range(100):
        dropped += spool.append(json.dumps(_event(i, pad=200)))[1]
    kept = [json.loads(r.payload)["seq"] for r in spool.pending()]
    assert spool.size_bytes() <= 8192
    assert spool.dropped == len(dropped) > 0 and sorted(dropped + kept) == list(range(100))
    assert kept == list(range(kept[0], 100)), "what is kept is the newest, without holes"
    spool.close()


def test_delivered_segments_are_deleted(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=32768, ack_seconds=0)
    for i in range(60):
        number, _ = spool.append(json.dumps(_event(i, pad=200)))
        spool.ack(number)
    assert len(list((tmp_path / "spool").glob(f"*{SEGMENT_SUFFIX}"))) <= 1
    spool.close()
    assert not list((tmp_path / "spool").glob(f"*{SEGMENT_SUFFIX}"))
    assert Spool(tmp_path / "spool").append("{}")[0] == 60


def test_one_spool_one_process(tmp_path: Path) -> None:
    first = Spool(tmp_path / "spool")
    with pytest.raises(SpoolError, match="in use by another process"):
        Spool(tmp_path / "spool")
    first.close()
    Spool(tmp_path / "spool").close()


def test_jsonl_waits_in_the_spool_while_the_disk_is_full_and_across_a_restart(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    out.symlink_to("/dev/full")  # every write fails with ENOSPC
    spec = f"jsonl:{out}?spool={tmp_path / 'spool'}"
    sink = open_sink(spec)
    assert isinstance(sink, JsonLinesSink)
    for i in range(5):
        sink.send(_event(i))
    health = sink.health()
    assert health.degraded and health.buffered == 5 and health.dropped == 0
    assert "No space left on device" in (health.last_error or "")
    assert sink.flush(timeout=0.1) is False
    sink.close()  # the daemon stops (or is restarted by systemd) during the outage

    out.unlink()  # the disk is back; an earlier run left half a line behind
    out.write_text(json.dumps(_event(-1)) + "\n" + '{"schema": 3, "type": "wi')
    sink = open_sink(spec)
    sink.send(_event(5))
    sink.close()
    seqs = [json.loads(line)["seq"] for line in out.read_text().splitlines()]
    assert seqs == [-1, 0, 1, 2, 3, 4, 5], "in order, once, the broken line cut off"
    assert sink.health().dropped == 0 and not sink.health().degraded


def test_without_a_spool_a_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    """The file is unbuffered: an event counted as dropped is not written later with the next one."""
    out = tmp_path / "events.jsonl"
    out.symlink_to("/dev/full")
    sink = open_sink(f"jsonl:{out}")
    sink.send(_event(0))
    out.unlink()
    sink.send(_event(1))
    sink.close()
    assert [json.loads(line)["seq"] for line in out.read_text().splitlines()] == [1]
    assert sink.stats()["dropped"] == 1


def test_mqtt_spool_delivers_after_a_broker_outage_and_a_daemon_restart(broker: Broker, tmp_path: Path) -> None:
    import paho.mqtt.client as mqtt

    broker.stop()
    spec = f"mqtt://127.0.0.1:{broker.port}/ward/bed3?client_id=spooled&reconnect=1&spool={tmp_path / 'spool'}"
    sink = open_sink(spec)
    for i in range(10):
        sink.send(_event(i))
    assert sink.health().buffered == 10 and not sink.health().connected
    started = time.monotonic()
    sink.close()  # stopped while the broker is away: the ten wait on disk
    assert time.monotonic() - started < 10

    broker.start()
    received: list[int] = []
    subscribed = threading.Event()
    listener = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="spool-reader")
    listener.on_connect = lambda c, u, f, rc, p=None: c.subscribe("ward/bed3/window", qos=1)
    listener.on_subscribe = lambda *args: subscribed.set()
    listener.on_message = lambda c, u, m: received.append(json.loads(m.payload)["seq"])
    listener.connect("127.0.0.1", broker.port)
    listener.loop_start()
    try:
        assert subscribed.wait(10)
        sink = open_sink(spec)  # the daemon starts again
        for i in range(10, 13):
            sink.send(_event(i))
        assert sink.flush(timeout=15)
        sink.close()
        deadline = time.monotonic() + 10
        while len(received) < 13 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        listener.loop_stop()
        listener.disconnect()
    assert received == list(range(13)), "every event, in order, once"
    assert Spool(tmp_path / "spool").pending() == []


def test_check_reports_the_spool_without_delivering_it(tmp_path: Path) -> None:
    from qlung_edge.daemon import check_sink

    out = tmp_path / "events.jsonl"
    spool = Spool(tmp_path / "spool")
    spool.append(json.dumps(_event(0)))
    spool.close()
    line = check_sink(f"jsonl:{out}?spool={tmp_path / 'spool'}")
    assert "1 undelivered event(s)" in line
    assert out.read_text() == "", "--check does not deliver"
    with pytest.raises(Exception, match="spool_mb"):
        open_sink(f"jsonl:{out}?spool={tmp_path / 'spool'}&spool_mb=0")


def test_mqtt_sink_never_deadlocks_with_paho(broker: Broker) -> None:
    """paho calls on_publish holding its outgoing-message lock, and publish() takes that lock: a sink that
    publishes while holding its own lock, which on_publish also takes, hangs (the soak benchmark found it)."""
    sink = open_sink(f"mqtt://127.0.0.1:{broker.port}/ward/bed4?client_id=busy")
    deadline = time.monotonic() + 10
    while not sink.health().connected and time.monotonic() < deadline:
        time.sleep(0.02)
    finished = threading.Event()

    def flood() -> None:
        for i in range(3000):
            sink.send(_event(i))
        finished.set()

    sender = threading.Thread(target=flood, daemon=True)
    sender.start()
    assert finished.wait(60), "send() hung"
    assert sink.flush(timeout=30) and sink.stats()["acknowledged"] == 3000
    sink.close()


def test_check_parses_mqtt_options_before_connecting() -> None:
    from qlung_edge.daemon import check_sink
    from qlung_edge.sinks import SinkError

    with pytest.raises(SinkError, match=r"unknown option.*bufer"):
        check_sink("mqtt://127.0.0.1:1/ward?bufer=5")  # nothing listens on port 1: parsing comes first
    with pytest.raises(SinkError, match="buffer and reconnect must be at least 1"):
        check_sink("mqtt://127.0.0.1:1/ward?buffer=0")


def test_ids_are_never_reused_after_out_of_order_deliveries(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    for i in range(10):
        spool.append(json.dumps(_event(i)))
    for number in (0, 1, 2, 3, 4, 7, 8, 9):  # 5 and 6 still on their way
        spool.ack(number)
    spool.close()
    again = Spool(tmp_path / "spool")
    assert [r.id for r in again.pending()] == [5, 6]
    new = [again.append(json.dumps(_event(i)))[0] for i in (10, 11, 12)]
    assert new == [10, 11, 12], "7-9 were delivered: a new event must not take their ids"
    again.close()
    assert [json.loads(r.payload)["seq"] for r in Spool(tmp_path / "spool").pending()] == [5, 6, 10, 11, 12]


def test_a_line_cut_inside_an_event_is_not_delivered(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.append(json.dumps(_event(0)))
    spool.close()
    segment = next((tmp_path / "spool").glob(f"*{SEGMENT_SUFFIX}"))
    segment.write_bytes(segment.read_bytes() + b'1 {"type": "window", "probs": {"normal": 0.9}\n')  # ends with "}"
    after = Spool(tmp_path / "spool")
    assert [r.id for r in after.pending()] == [0] and after.skipped_lines == 1
    after.close()


def test_memory_is_bounded_while_the_disk_refuses_the_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=8192)
    spool._segment_failed = lambda err: None  # type: ignore[method-assign]  # count nothing, just fail
    folder = tmp_path / "spool"
    for segment in folder.glob(f"*{SEGMENT_SUFFIX}"):
        segment.unlink()
    spool._file = open("/dev/full", "wb", buffering=0)  # noqa: SIM115  # every write fails with ENOSPC
    spool.segment_bytes = 10**9  # keep writing to it
    spool._segments = [(0, folder / "full", 0)]
    for i in range(200):
        spool.append(json.dumps(_event(i, pad=200)))
    assert len(spool) * 200 <= 8192 and spool.dropped > 0
    assert [json.loads(r.payload)["seq"] for r in spool.pending()][-1] == 199
