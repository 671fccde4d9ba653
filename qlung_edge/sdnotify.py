"""systemd's notify protocol: tell the service manager when the daemon is ready, alive, reloading or stopping.

Under `Type=notify` systemd waits for READY=1 before it counts the service as started, and with `WatchdogSec=`
it restarts the service when WATCHDOG=1 stops arriving. The protocol is one datagram per message on the Unix
socket named by $NOTIFY_SOCKET (a leading '@' means the abstract namespace), lines of `KEY=value`. Outside
systemd (no $NOTIFY_SOCKET) every call does nothing.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Mapping


class Notifier:
    """`ready()`, `watchdog()`, `reloading()`, `stopping()`, `status()`; `watchdog()` may be called as often as
    convenient: it sends at most every half watchdog interval, as sd_watchdog_enabled(3) recommends."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = env.get("NOTIFY_SOCKET") or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_seconds = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 and mine else None
        self._last_ping = 0.0
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self.sent: list[str] = []
        """Messages sent (the last 100), for tests and /health."""

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def _target(self) -> str | bytes:
        assert self.address is not None
        return b"\0" + self.address[1:].encode() if self.address.startswith("@") else self.address

    def send(self, *lines: str) -> bool:
        """One datagram of `KEY=value` lines; False when not under systemd or the socket is gone."""
        if self.address is None:
            return False
        message = "\n".join(lines)
        with self._lock:
            try:
                if self._socket is None:
                    self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.sendto(message.encode(), self._target())
            except OSError:
                return False
            self.sent = [*self.sent[-99:], message]
        return True

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> bool:
        return self.send("RELOADING=1")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        """Ping the watchdog if half its interval has passed since the last ping."""
        if self.watchdog_seconds is None:
            return False
        now = time.monotonic()
        if now - self._last_ping < self.watchdog_seconds / 2:
            return False
        self._last_ping = now
        return self.send("WATCHDOG=1")

    @property
    def poll_seconds(self) -> float:
        """How long a loop that feeds the watchdog may block between pings."""
        return 1.0 if self.watchdog_seconds is None else min(1.0, self.watchdog_seconds / 4)

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None
