"""The daemon's live feed for the bedside page: its events and a light audio envelope, as Server-Sent Events.

Each browser gets a bounded queue (a slow or stalled page loses its oldest messages, never slows the daemon);
a page that connects late first gets the recent events again, so it shows the examination in progress and the
last verdict at once. The envelope (min/max per 20 ms) is computed only while a page is watching.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
from collections import deque
from collections.abc import Iterator
from typing import Any

import numpy as np

ENVELOPE_SECONDS = 0.02
"""One min/max pair per this much audio on the page's waveform strip."""


def envelope(samples: np.ndarray, rate: int, seconds: float = ENVELOPE_SECONDS) -> list[list[float]]:
    """[min, max] of each `seconds` of `samples` (a shorter last step included), rounded for the wire."""
    x = np.asarray(samples, np.float32)
    step = max(1, round(seconds * rate))
    return [
        [round(float(part.min()), 4), round(float(part.max()), 4)]
        for part in (x[start : start + step] for start in range(0, len(x), step))
    ]


class LiveFeed:
    """Fan-out of messages to the open pages; `messages()` is one page's stream until `close()`."""

    def __init__(self, replay: int = 200, per_client: int = 1000) -> None:
        self._lock = threading.Lock()
        self._clients: list[queue.Queue[tuple[str, str] | None]] = []
        self._recent: deque[tuple[str, str]] = deque(maxlen=replay)
        self.per_client = per_client
        self.closed = False

    @property
    def watching(self) -> bool:
        return bool(self._clients)

    def publish(self, kind: str, data: dict[str, Any], keep: bool = True) -> None:
        """One message to every page; `keep` also replays it to pages that open later."""
        message = (kind, json.dumps(data, separators=(",", ":"), allow_nan=False))
        with self._lock:
            if keep:
                self._recent.append(message)
            for client in self._clients:
                if client.full():
                    with contextlib.suppress(queue.Empty):
                        client.get_nowait()
                client.put_nowait(message)

    def messages(self, keepalive: float = 10.0) -> Iterator[bytes]:
        """SSE-encoded messages for one page: the recent ones, then live ones; a comment line every
        `keepalive` seconds of silence (so a vanished page is noticed); ends when the feed closes."""
        client: queue.Queue[tuple[str, str] | None] = queue.Queue(self.per_client)
        with self._lock:
            backlog = list(self._recent)
            self._clients.append(client)
        try:
            yield b"retry: 2000\n\n"
            for kind, data in backlog:
                yield f"event: {kind}\ndata: {data}\n\n".encode()
            while True:
                try:
                    item = client.get(timeout=keepalive)
                except queue.Empty:
                    if self.closed:
                        return
                    yield b": keep-alive\n\n"
                    continue
                if item is None:
                    return
                kind, data = item
                yield f"event: {kind}\ndata: {data}\n\n".encode()
        finally:
            with self._lock:
                if client in self._clients:
                    self._clients.remove(client)

    def close(self) -> None:
        """Let every page's stream end after what it has already been sent."""
        with self._lock:
            self.closed = True
            for client in self._clients:
                if client.full():
                    with contextlib.suppress(queue.Empty):
                        client.get_nowait()
                client.put_nowait(None)
