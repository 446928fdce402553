"""A local Mosquitto broker on a free loopback port, for the demo, tests and benchmarks.

Started as a child process so that callers can stop and restart it (broker-outage tests).
Mosquitto comes from Debian's package `mosquitto`; `scripts/setup.sh` installs it where it is
missing.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


class BrokerUnavailable(RuntimeError):
    pass


def find_mosquitto() -> str:
    for candidate in CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    raise BrokerUnavailable(
        "mosquitto not found; install Debian's package: sudo apt-get install -y mosquitto "
        "(or run scripts/setup.sh)"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


class LocalBroker:
    """`with LocalBroker() as broker:` gives a running broker on `broker.port`."""

    starts = 0  # brokers started in this process (the tests' `broker` marker is checked on it)

    def __init__(self, port: int | None = None, extra_config: str = "",
                 anonymous: bool = True) -> None:
        """`extra_config` is appended to mosquitto.conf (more listeners, a password file, an
        ACL); `anonymous=False` makes every listener require a login."""
        self.binary = find_mosquitto()
        self.port = port or free_port()
        self.extra_config = extra_config
        self.anonymous = anonymous
        self._dir = Path(tempfile.mkdtemp(prefix="mlink-mosquitto-"))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self._dir / "mosquitto.log"

    def start(self, timeout_s: float = 10.0) -> LocalBroker:
        conf = self._dir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"allow_anonymous {'true' if self.anonymous else 'false'}\npersistence false\n"
            f"log_dest file {self.log_path}\n"
            # as root, mosquitto would switch to its own user, which cannot read our files
            f"{'user root' if os.geteuid() == 0 else ''}\n{self.extra_config}\n"
        )
        LocalBroker.starts += 1
        with (self._dir / "stderr.log").open("wb") as stderr:  # start-up errors go there
            self._process = subprocess.Popen(
                [self.binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=stderr
            )
        deadline = time.monotonic() + timeout_s
        while not port_open(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                log_text = "".join(p.read_text(errors="replace") for p in (
                    self.log_path, self._dir / "stderr.log") if p.exists())
                self.stop()
                raise BrokerUnavailable(f"mosquitto did not start on port {self.port}: {log_text}")
            time.sleep(0.05)
        log.info("mosquitto listening on 127.0.0.1:%d", self.port)
        return self

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
