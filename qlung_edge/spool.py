"""An on-disk queue of events a sink has not delivered yet, so that an outage loses nothing, even across a restart.

Each event is appended (and fsynced) to a segment file as `<id> <json>` before the sink tries to deliver it;
delivered events are acknowledged by id. The id below which everything is delivered (and the few delivered out
of order above it) is written atomically beside the segments, at most every `ack_seconds` and on close; a
segment is deleted once all its events are delivered. On open, the rest are pending again, in the order they
were written.

Delivery is at least once: a crash can replay events delivered in the last `ack_seconds`. Each event carries
`run_id` and `seq`, which tell a repeat apart downstream. The spool is bounded: beyond `max_bytes` the oldest
segment goes, and its undelivered events are counted as dropped.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from qlung_edge.errors import QLungError

log = logging.getLogger("qlung_edge.spool")

ACK_FILE = "delivered"
LOCK_FILE = "lock"
SEGMENT_SUFFIX = ".spool"


class SpoolError(QLungError):
    """A spool folder that cannot be used, named by its path."""


@dataclass(frozen=True)
class Spooled:
    id: int
    payload: str


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened for fsync
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Spool:
    """Thread-safe; `append` may be called from the inference thread while `ack` comes from a network thread."""

    def __init__(self, folder: Path, max_bytes: int = 20_000_000, ack_seconds: float = 1.0) -> None:
        if max_bytes < 4000:
            raise SpoolError(f"a spool needs at least 4 kB, got {max_bytes} bytes", path=str(folder))
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.segment_bytes = max(4096, max_bytes // 8)
        self.ack_seconds = ack_seconds
        self._lock = threading.Lock()
        self.dropped = 0
        """Undelivered events lost because the spool was full."""
        self.skipped_lines = 0
        """Lines that could not be read back (a write cut short by a crash or power loss)."""
        self.unsaved = 0
        """Events kept in memory only because the spool's disk refused them (lost if the daemon stops)."""
        self.last_error: str | None = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._lock_file = (self.folder / LOCK_FILE).open("a")
        except OSError as err:
            raise SpoolError(f"cannot write in the spool folder ({err.strerror})", path=str(self.folder)) from None
        try:  # two processes appending to one spool would interleave and deliver twice
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            raise SpoolError("in use by another process (a running daemon?)", path=str(self.folder)) from None
        self._delivered_below, self._delivered_above = self._read_mark()
        self._mark_written_at = time.monotonic()
        self._mark_dirty = False
        self._pending: dict[int, str] = {}
        """Undelivered events by id (insertion order = id order)."""
        self._pending_bytes = 0
        """Their size: events the disk refused live only here, so memory is bounded by `max_bytes` too."""
        self._highest_seen = -1
        self._segments: list[tuple[int, Path, int]] = []
        """(first id, path, bytes) of every segment, oldest first."""
        self._load()
        # Never reuse an id: a new event must not inherit an old one's "delivered" in the mark.
        self._next_id = max(self._delivered_below, max(self._delivered_above, default=-1) + 1, self._highest_seen + 1)
        self._file: IO[bytes] | None = None
        if self._pending:
            log.warning("%s: %d undelivered event(s) from an earlier run, sending them first", self.folder,
                        len(self._pending))  # fmt: skip

    # -- reading back --------------------------------------------------------------------------------------
    def _read_mark(self) -> tuple[int, set[int]]:
        """`<every id below this was delivered> [ids above it delivered out of order]`."""
        path = self.folder / ACK_FILE
        if not path.exists():
            return 0, set()
        try:
            numbers = [int(word) for word in path.read_text().split()]
            return numbers[0], set(numbers[1:])
        except (OSError, ValueError, IndexError) as err:
            raise SpoolError(f"unreadable delivery mark ({err}); move the folder aside to start afresh",
                             path=str(path)) from None  # fmt: skip

    def _load(self) -> None:
        for path in sorted(self.folder.glob(f"*{SEGMENT_SUFFIX}")):
            try:
                first = int(path.stem)
            except ValueError:
                continue
            data = path.read_bytes()
            self._segments.append((first, path, len(data)))
            for line in data.split(b"\n"):
                if not line:
                    continue
                head, _, body = line.partition(b" ")
                try:
                    number, text = int(head), body.decode("utf-8")
                    if not isinstance(json.loads(text), dict):  # a line cut short, or two run together
                        raise ValueError("not an event")
                except ValueError:  # UnicodeDecodeError and JSONDecodeError included
                    self.skipped_lines += 1
                    continue
                self._highest_seen = max(self._highest_seen, number)
                if number >= self._delivered_below and number not in self._delivered_above:
                    self._pending[number] = text
        if self.skipped_lines:
            log.warning("%s: %d damaged line(s) left out", self.folder, self.skipped_lines)
        self._pending = dict(sorted(self._pending.items()))
        self._pending_bytes = sum(len(text) for text in self._pending.values())
        self._drop_delivered_segments()

    # -- writing -------------------------------------------------------------------------------------------
    def append(self, payload: str) -> tuple[int, list[int]]:
        """Store one event (fsynced) and return its id and the ids of undelivered events dropped for room."""
        line = payload.replace("\n", " ")
        with self._lock:
            number = self._next_id
            self._next_id += 1
            record = f"{number} {line}\n".encode()
            dropped = self._make_room(len(record), number)
            self._pending[number] = line
            self._pending_bytes += len(line)
            dropped += self._bound_memory()
            try:
                if self._file is None or self._segments[-1][2] + len(record) > self.segment_bytes:
                    self._open_segment(number)
                assert self._file is not None
                written = self._file.write(record)
                if written != len(record):  # a full disk part way: cut it off, or the next line would join it
                    self._file.truncate(self._segments[-1][2])
                    raise OSError(errno.ENOSPC, f"wrote {written} of {len(record)} bytes")
                os.fsync(self._file.fileno())
            except OSError as err:  # a full or failing disk: keep it in memory, deliver it all the same
                self._segment_failed(err)
                return number, dropped
            first, path, size = self._segments[-1]
            self._segments[-1] = (first, path, size + len(record))
            if self.last_error is not None:
                log.warning("%s: storing events again (%d kept in memory only meanwhile)", self.folder, self.unsaved)
                self.last_error = None
            if time.monotonic() - self._mark_written_at >= self.ack_seconds:
                with contextlib.suppress(OSError):
                    self._write_mark()
                self._drop_delivered_segments()
            return number, dropped

    def _segment_failed(self, err: OSError) -> None:
        self.unsaved += 1
        if self.last_error is None:
            log.error("%s: cannot store events (%s): keeping them in memory until it can", self.folder, err)
        self.last_error = f"spool {self.folder}: {err}"
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        if self._segments and self._segments[-1][2] == 0:  # the empty segment just opened
            _, path, _ = self._segments.pop()
            path.unlink(missing_ok=True)

    def _open_segment(self, first: int) -> None:
        if self._file is not None:
            self._file.close()
        path = self.folder / f"{first:016d}{SEGMENT_SUFFIX}"
        self._file = path.open("ab", buffering=0)
        path.chmod(0o600)
        self._segments.append((first, path, 0))
        _fsync_folder(self.folder)

    def _bound_memory(self) -> list[int]:
        """Oldest undelivered events dropped while those held exceed `max_bytes` (possible only while the disk
        refuses the spool, since the segments are bounded by the same figure)."""
        dropped: list[int] = []
        while self._pending_bytes > self.max_bytes and len(self._pending) > 1:
            oldest = next(iter(self._pending))
            self._pending_bytes -= len(self._pending.pop(oldest))
            dropped.append(oldest)
        if dropped:
            self.dropped += len(dropped)
            self._advance_mark(next(iter(self._pending)))
            log.error("%s: %d undelivered event(s) held in memory dropped (over %d bytes)", self.folder,
                      len(dropped), self.max_bytes)  # fmt: skip
        return dropped

    def _make_room(self, size: int, appending: int) -> list[int]:
        dropped: list[int] = []
        while self._segments and sum(s[2] for s in self._segments) + size > self.max_bytes:
            first, path, _ = self._segments.pop(0)
            end = self._segments[0][0] if self._segments else appending
            lost = [n for n in self._pending if first <= n < end]
            for n in lost:
                self._pending_bytes -= len(self._pending.pop(n))
            dropped.extend(lost)
            if not self._segments:
                if self._file is not None:
                    self._file.close()
                self._file = None
            path.unlink(missing_ok=True)
            self._advance_mark(end)
        if dropped:
            self.dropped += len(dropped)
            log.error("%s: spool full (%d bytes), %d undelivered event(s) dropped", self.folder, self.max_bytes,
                      len(dropped))  # fmt: skip
        return dropped

    # -- delivery ------------------------------------------------------------------------------------------
    def ack(self, number: int) -> None:
        """The event `number` was delivered."""
        with self._lock:
            text = self._pending.pop(number, None)
            if text is None:
                return
            self._pending_bytes -= len(text)
            self._delivered_above.add(number)
            self._mark_dirty = True
            floor = next(iter(self._pending), self._next_id)  # ids are held in increasing order
            self._advance_mark(floor)
            if time.monotonic() - self._mark_written_at >= self.ack_seconds:
                with contextlib.suppress(OSError):  # written again later; a crash meanwhile replays a little
                    self._write_mark()
                self._drop_delivered_segments()

    def _advance_mark(self, floor: int) -> None:
        if floor > self._delivered_below:
            self._delivered_below = floor
            self._delivered_above = {n for n in self._delivered_above if n >= floor}
            self._mark_dirty = True

    def _write_mark(self) -> None:
        if not self._mark_dirty:
            return
        temporary = self.folder / f".{ACK_FILE}.tmp"
        with temporary.open("w") as out:
            out.write(" ".join(map(str, [self._delivered_below, *sorted(self._delivered_above)])) + "\n")
            out.flush()
            os.fsync(out.fileno())
        temporary.replace(self.folder / ACK_FILE)
        _fsync_folder(self.folder)
        self._mark_written_at = time.monotonic()
        self._mark_dirty = False

    def _drop_delivered_segments(self) -> None:
        """Delete whole segments below the mark (never the one being written)."""
        while len(self._segments) > 1 and self._segments[1][0] <= self._delivered_below:
            _, path, _ = self._segments.pop(0)
            path.unlink(missing_ok=True)

    def pending(self, limit: int | None = None) -> list[Spooled]:
        """The undelivered events, oldest first (the first `limit` of them)."""
        with self._lock:
            return [Spooled(n, text) for n, text in itertools.islice(self._pending.items(), limit)]

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def size_bytes(self) -> int:
        with self._lock:
            return sum(s[2] for s in self._segments)

    def close(self) -> None:
        with self._lock:
            with contextlib.suppress(OSError):
                self._write_mark()
            if not self._pending and self._segments:  # everything delivered: nothing to keep
                for _, path, _ in self._segments:
                    path.unlink(missing_ok=True)
                self._segments = []
            if self._file is not None:
                self._file.close()
                self._file = None
            self._lock_file.close()  # releases the lock
