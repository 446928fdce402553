"""systemd: the sd_notify protocol over a real AF_UNIX datagram socket (paths and abstract
names), the agent's READY/WATCHDOG/STOPPING life cycle, and `systemd-analyze verify`."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from agent.sdnotify import Notifier
from devtools.broker import LocalBroker
from tests.support.agent_process import AgentProcess, Client, write_config

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "mlink-agent.service"


def _listen(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    return sock


def _drain(sock: socket.socket) -> list[str]:
    """The datagrams queued now (a busy sender must not keep this from returning)."""
    datagrams = []
    while True:
        try:
            datagrams.append(sock.recv(4096, socket.MSG_DONTWAIT).decode())
        except BlockingIOError:
            return datagrams


def test_notify_to_a_path_and_to_an_abstract_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with _listen(str(path)) as sock:
        notifier = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "100000",
                             "WATCHDOG_PID": str(os.getpid())})
        assert notifier.watchdog_interval_s == pytest.approx(0.05)
        assert notifier.ready("up")
        assert notifier.watchdog() and not notifier.watchdog()  # rate-limited
        notifier.stopping()
        assert _drain(sock) == ["READY=1\nSTATUS=up", "WATCHDOG=1", "STOPPING=1"]
    name = f"mlink-test-{uuid.uuid4().hex}"
    with _listen(b"\0" + name.encode()) as sock:
        assert Notifier({"NOTIFY_SOCKET": f"@{name}"}).status("abstract")
        assert _drain(sock) == ["STATUS=abstract"]


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier({})
    assert not notifier.enabled and not notifier.ready() and not notifier.watchdog()
    other_pid = Notifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert other_pid.watchdog_interval_s is None  # the watchdog is for another process


@pytest.mark.broker
def test_agent_life_cycle_over_notify_socket(digits_build, tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with LocalBroker() as broker, _listen(str(path)) as sock:
        config = write_config(digits_build.root, broker.port, tmp_path / "state")
        client = Client(broker.port)
        agent = AgentProcess(config, env={"NOTIFY_SOCKET": str(path),
                                          "WATCHDOG_USEC": "200000"})
        messages: list[str] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and sum("WATCHDOG=1" in m for m in messages) < 3:
            time.sleep(0.1)
            messages += _drain(sock)
        code, log = agent.stop()
        messages += _drain(sock)
        client.stop()
    assert code == 0, log[-3000:]
    fields = [line for m in messages for line in m.split("\n")]
    assert "READY=1" in fields and "STOPPING=1" in fields, messages
    ready, stopping = fields.index("READY=1"), fields.index("STOPPING=1")
    watchdogs = [i for i, f in enumerate(fields) if f == "WATCHDOG=1"]
    assert len(watchdogs) >= 3 and ready < stopping
    assert all(ready < i < stopping for i in watchdogs)  # only while frames are processed
    assert "STATUS=measuring costs" in fields[:ready]  # READY comes after the measuring
    assert any(f.startswith("STATUS=") and "fps" in f for f in fields)


def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package `systemd`)")
    agent = shutil.which("mlink-agent", path=str(ROOT / ".venv" / "bin")) or shutil.which(
        "mlink-agent")
    if agent is None:
        pytest.skip("mlink-agent is not installed on PATH or in .venv")
    text = UNIT.read_text()
    assert "Type=notify" in text and "WatchdogSec=" in text and "DynamicUser=yes" in text
    unit = tmp_path / "mlink-agent.service"  # the installed path, pointed at this checkout
    unit.write_text(text.replace("/opt/mlink-edge/.venv/bin/mlink-agent", agent))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                            timeout=60)
    complaints = [line for line in (result.stdout + result.stderr).splitlines()
                  if "mlink-agent.service" in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


def test_unit_sandboxing_exposure_is_ok(tmp_path: Path) -> None:
    """`systemd-analyze security --offline=true`: the README states the score; it stays at
    systemd's "OK" level or better (<= 2.0 here, on a 0-10 scale)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package `systemd`)")
    unit = tmp_path / "mlink-agent.service"
    unit.write_text(UNIT.read_text())
    result = subprocess.run([analyze, "security", "--offline=true", str(unit)],
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for mlink-agent.service: ([0-9.]+)",
                      result.stdout + result.stderr)
    assert match, result.stdout[-2000:] + result.stderr[-2000:]
    assert float(match.group(1)) <= 2.0, result.stdout
