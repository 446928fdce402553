"""Graceful stop: SIGTERM while the broker is away and the outbox holds a backlog; the broker
comes back within the stop timeout, the agent drains every output (each one acknowledged by
the broker), publishes `stopped` and exits 0; the retained `availability` stays `stopped`, so
the LWT (`offline`, retained too) was not sent on this clean exit. The unclean exit (SIGKILL
leaves `offline`) is in tests/e2e/test_service.py."""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.transport.outbox import Outbox
from devtools.broker import LocalBroker
from tests.support.agent_process import AgentProcess, Client, outbox_depth, retained, write_config

pytestmark = pytest.mark.broker  # each test starts its own Mosquitto


@contextlib.contextmanager
def backlog(digits_build, tmp_path: Path, extra: str = ""
            ) -> Iterator[tuple[LocalBroker, AgentProcess, Path]]:
    """An agent whose broker went away after its first outputs, with at least 30 outputs
    waiting in its outbox; the agent and the client are stopped on the way out."""
    state = tmp_path / "state"
    with LocalBroker() as broker:
        config = write_config(digits_build.root, broker.port, state, extra=extra)
        client = Client(broker.port)
        agent = AgentProcess(config)
        try:
            client.wait(lambda: client.outputs_of("digit")[3:])
            broker.stop()
            outbox = state / "outbox.sqlite"
            client.wait(lambda: outbox_depth(outbox) >= 30, timeout_s=30)
            yield broker, agent, outbox
        finally:
            agent.stop()
            client.stop()


def test_sigterm_drains_a_backlog_then_publishes_stopped(digits_build, tmp_path: Path) -> None:
    with backlog(digits_build, tmp_path) as (broker, agent, outbox):
        agent.signal(signal.SIGTERM)  # the backlog is waiting on disk
        broker.start()
        code, log = agent.stop(timeout_s=60)  # systemd's TimeoutStopSec=60
        assert code == 0, log[-3000:]  # 0 only when every output was acknowledged
        assert "still unacknowledged" not in log
        left = Outbox(outbox)
        assert left.depth == 0 and left.dropped == 0
        left.close()
        assert retained(broker.port, "availability") == "stopped"
        status = json.loads(retained(broker.port, "status"))
        assert status["state"] == "stopped"
        assert status["outbox"]["depth"] == 0  # the retained status is the one after the drain


def test_sigterm_with_the_broker_gone_ends_within_the_stop_timeout(digits_build,
                                                                     tmp_path: Path) -> None:
    """The broker does not come back: the agent drains once (`[state] stop_drain_s`, 30 s by
    default, 4 s here), says truthfully what it keeps, and exits well before systemd's
    TimeoutStopSec=60 would kill it; the backlog stays in the outbox for the next start."""
    import time

    with backlog(digits_build, tmp_path, extra="stop_drain_s = 4") as (_, agent, outbox):
        started = time.monotonic()
        agent.signal(signal.SIGTERM)
        code, log = agent.stop(timeout_s=60)
        took = time.monotonic() - started
    assert agent.process.returncode is not None and 4 <= took < 19, (took, log[-2000:])
    assert code == 1, log[-3000:]  # 1: outputs left unacknowledged
    assert "kept in the outbox for the next start" in log and "Traceback" not in log
    assert log.count("still unacknowledged") == 1, "drained once, not twice"
    assert outbox_depth(outbox) >= 30
