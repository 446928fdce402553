"""Back-pressure, through a real Mosquitto: while the broker is away and the outbox holds 90%
of its cap, the loop skips frames (counted by reason in the status) rather than make outputs
the outbox would drop; once the broker is back the outputs kept are delivered and the loop
processes every frame again. On the committed fixture (tests/data/digits3)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import tests.support.python_models as pm
from agent.config import MqttConfig, load_config
from agent.scheduler import Agent
from agent.transport import HOLD_AT, Publisher
from agent.transport.outbox import Outbox
from tests.agent.test_scheduler_failures import python_config
from tests.support.agent_process import wait_until
from tests.support.contract import validate

pytestmark = pytest.mark.broker

CAP = 20  # outbox rows: one per frame message


def test_the_loop_skips_frames_while_the_outbox_is_nearly_full(
        digits_fixture, persistent_broker, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    pm.reset()
    pm.MODEL_DIR = digits_fixture.root / "models"
    broker = persistent_broker
    outbox = Outbox(tmp_path / "outbox.sqlite", max_messages=CAP)
    publisher = Publisher(MqttConfig(port=broker.port, client_id="held"), "test", outbox)
    publisher.connect(10)
    caplog.set_level(logging.WARNING, logger="agent.transport")
    try:
        agent = Agent.from_config(load_config(python_config(tmp_path, digits_fixture.root)),
                                  publisher)
        broker.stop()
        wait_until(lambda: not publisher.connected, 10, "the outage")
        counters = agent.run(max_frames=50)
        processed = int(HOLD_AT * CAP)  # frames, until the outbox holds 90%
        assert counters.frames == 50
        assert counters.frames_skipped == 50 - processed
        assert publisher.pending == processed  # one message per frame, every model in it
        assert outbox.dropped == 0 and publisher.unstored == 0, "nothing made was dropped"
        status = agent.status("running")
        validate("status", status)
        assert status["counters"]["frames_skipped"] == 50 - processed
        delivery = status["delivery"]
        assert delivery["frames_skipped"] == {"outbox_full": 50 - processed}
        assert delivery["state"] == "degraded"
        assert any("outbox_full" in p for p in delivery["problems"])
        assert sum("the loop skips frames" in r.message for r in caplog.records) == 1

        broker.start()
        assert publisher.drain(30), "what was kept is delivered"
        assert outbox.acked == processed
        counters = agent.run(max_frames=53)  # the counters go on: 3 more frames
        assert counters.frames == 53 and counters.frames_skipped == 50 - processed
        assert any("back-pressure over" in r.message for r in caplog.records)
        assert not publisher.health()["problems"]
    finally:
        publisher.close(5)
        pm.reset()
