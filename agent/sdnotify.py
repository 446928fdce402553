"""The sd_notify protocol, without libsystemd: datagrams to `$NOTIFY_SOCKET`.

A name starting with `@` is an abstract socket (a leading NUL byte). Without NOTIFY_SOCKET
(not started by systemd with Type=notify) every call is a no-op, so the agent runs the same
way under systemd, in a terminal and in the tests.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        name = env.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = None
        if name.startswith("@"):
            self.address = b"\0" + name[1:].encode()
        elif name.startswith("/"):
            self.address = name
        elif name:
            log.warning("NOTIFY_SOCKET %r is neither a path nor an abstract name; ignored", name)
        self.watchdog_interval_s = self._watchdog_interval(env)
        self._last_watchdog = 0.0
        self._socket: socket.socket | None = None

    @staticmethod
    def _watchdog_interval(env: dict[str, str] | os._Environ[str]) -> float | None:
        """Half of WATCHDOG_USEC, when the watchdog is meant for this process."""
        try:
            usec = int(env.get("WATCHDOG_USEC", "0"))
            pid = int(env.get("WATCHDOG_PID", str(os.getpid())))
        except ValueError:
            return None
        return usec / 2e6 if usec > 0 and pid == os.getpid() else None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send `KEY=value` fields in one datagram; False if there is nowhere to send."""
        if self.address is None:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX,
                                             socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto("\n".join(fields).encode(), socket.MSG_DONTWAIT, self.address)
        except OSError as exc:
            log.warning("sd_notify to %r failed: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        """WATCHDOG=1, at most every half watchdog interval (every second without one).
        Called only after a frame was processed: a stalled loop stops the pings."""
        now = time.monotonic()
        if now - self._last_watchdog < (self.watchdog_interval_s or 1.0):
            return False
        self._last_watchdog = now
        return self.notify("WATCHDOG=1")

    def reloading(self) -> bool:
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={now_usec}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
