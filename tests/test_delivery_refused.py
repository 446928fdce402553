"""A broker that refuses publications, through a real Mosquitto with an ACL: a PUBACK with a
failure reason code (135 Not authorized) is not a delivery. The outputs stay in the outbox,
the health says degraded with the refusals by reason code, the log says it once per topic,
and once the ACL allows the topics again the outputs waiting are delivered, unmarked (no copy
of them reached anyone). A response the broker refuses is counted and dropped, never sent
again."""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

import pytest

from agent.broker import LocalBroker
from agent.config import MqttConfig
from agent.outbox import Outbox
from agent.publisher import Publisher
from tests.agent_process import Subscriber, wait_until
from tests.broker_security import password_file

pytestmark = pytest.mark.broker

DEVICE = "box-1"
USERS = {"box": "box-secret", "watcher": "watch-secret"}
DENY_OUTPUTS = (f"user box\ntopic read mlink/{DEVICE}/#\n"
                f"topic write mlink/{DEVICE}/status\ntopic write mlink/{DEVICE}/availability\n"
                f"topic write mlink/{DEVICE}/config/#\n\n"
                "user watcher\ntopic read mlink/#\n")
ALLOW_ALL = f"user box\ntopic readwrite mlink/{DEVICE}/#\n\nuser watcher\ntopic read mlink/#\n"


def test_refused_outputs_stay_in_the_outbox_and_are_sent_once_allowed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    acl = tmp_path / "acl"
    acl.write_text(DENY_OUTPUTS)
    passwords = password_file(tmp_path / "passwords", USERS)
    (tmp_path / "box-password").write_text(USERS["box"])
    with LocalBroker(anonymous=False, extra_config=f"password_file {passwords}\n"
                                                   f"acl_file {acl}\n") as broker:
        watcher = Subscriber(broker.port, f"mlink/{DEVICE}/models/#", key="i",
                             client_id="watcher", login=("watcher", USERS["watcher"]))
        outbox = Outbox(tmp_path / "outbox.sqlite")
        publisher = Publisher(MqttConfig(port=broker.port, username="box",
                                         password_file=tmp_path / "box-password"),
                              DEVICE, outbox)
        caplog.set_level(logging.ERROR, logger="agent.publisher")
        publisher.connect(10)
        try:
            for i in range(30):
                publisher.publish(publisher.topics.output("digit" if i % 2 else "parity"),
                                  {"i": i})
            wait_until(lambda: sum(publisher.refused.values()) >= 30, 10, "30 refusals")
            health = publisher.health()
            assert health["state"] == "degraded", health
            assert set(health["refused"]) == {"135 Not authorized"}, health
            assert outbox.depth == 30 and publisher.pending == 30, "refused is not delivered"
            refusal_lines = [r for r in caplog.records if "refused a publication" in r.message]
            assert len(refusal_lines) == 2, "logged once per topic"  # digit and parity
            # a response on a denied topic: counted, dropped, not sent again
            publisher.respond(f"mlink/{DEVICE}/models/x/response", {"status": "ok"})
            wait_until(lambda: publisher.responses_dropped == 1, 10, "the response dropped")

            acl.write_text(ALLOW_ALL)
            broker._process.send_signal(signal.SIGHUP)  # mosquitto reloads its ACL
            assert publisher.drain(30), "the refused outputs are sent again once allowed"
            assert watcher.wait_for(30) == set(range(30))
            time.sleep(0.5)
            assert not any(p.get("possible_duplicate") for p in watcher.payloads), \
                "a refused output reached no one: its next copy is not a duplicate"
            assert publisher.responses_dropped == 1
            assert publisher.health()["refused_waiting"] == 0
        finally:
            publisher.close(1)
            watcher.stop()
