"""A broker that refuses publications, through a real Mosquitto with an ACL: a PUBACK with a
failure reason code (135 Not authorized) is not a delivery. The outputs stay in the outbox,
the health says degraded with the refusals by reason code, the log says it once per topic,
and once the ACL allows the topics again the outputs waiting are delivered, unmarked (no copy
of them reached anyone); refusals that come while the outbox cannot be written are kept in
memory until it can. A response the broker refuses is counted and dropped, never sent
again. A full disk under the outbox: the status says `disk_full`, the loop is not blocked,
outputs beyond the staging bound are dropped and counted, a drain gives up within seconds,
and everything else is delivered once the disk has room again."""

from __future__ import annotations

import json
import logging
import signal
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.publish import single

from agent.config import MqttConfig
from agent.transport import Publisher
from agent.transport.outbox import Outbox
from devtools.broker import LocalBroker
from tests.support.agent_process import Subscriber, wait_until
from tests.support.broker_security import password_file

pytestmark = pytest.mark.broker

DEVICE = "box-1"
USERS = {"box": "box-secret", "watcher": "watch-secret"}
DENY_OUTPUTS = (f"user box\ntopic read mlink/{DEVICE}/#\n"
                f"topic write mlink/{DEVICE}/status\ntopic write mlink/{DEVICE}/availability\n"
                f"topic write mlink/{DEVICE}/config/#\n\n"
                "user watcher\ntopic read mlink/#\n")
ALLOW_ALL = f"user box\ntopic readwrite mlink/{DEVICE}/#\n\nuser watcher\ntopic read mlink/#\n"


def test_refused_outputs_stay_in_the_outbox_and_are_sent_once_allowed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agent.transport.sender.REFUSED_RETRY_S", (0.5, 1.0))  # 5 s, 60 s
    acl = tmp_path / "acl"
    acl.write_text(ALLOW_ALL)
    passwords = password_file(tmp_path / "passwords", USERS)
    (tmp_path / "box-password").write_text(USERS["box"])
    with LocalBroker(anonymous=False, extra_config=f"password_file {passwords}\n"
                                                   f"acl_file {acl}\n") as broker:
        config = MqttConfig(port=broker.port, username="box",
                            password_file=tmp_path / "box-password")
        watcher = Subscriber(broker.port, f"mlink/{DEVICE}/models/#", key="i",
                             client_id="watcher", login=("watcher", USERS["watcher"]))
        # an output delivered whose PUBACK never came back (the agent died first): its row
        # is in the outbox, sent; the next process sends it again, marked, and that copy is
        # refused: it stays marked when it goes again (the first copy was delivered)
        outbox = Outbox(tmp_path / "outbox.sqlite")
        publisher = Publisher(config, DEVICE, outbox)
        first = (publisher.topics.output("digit"), json.dumps({"i": 100}).encode(), 1, None)
        outbox.store([first], sent=True)
        single(first[0], first[1], qos=1, port=broker.port, protocol=mqtt.MQTTv311,
               auth={"username": "box", "password": USERS["box"]})
        assert watcher.wait_for(1) == {100}, "the first copy was delivered"
        acl.write_text(DENY_OUTPUTS)
        broker._process.send_signal(signal.SIGHUP)  # mosquitto reloads its ACL
        time.sleep(0.3)
        caplog.set_level(logging.ERROR, logger="agent.transport")
        publisher.connect(10)
        try:
            wait_until(lambda: sum(publisher.refused.values()) >= 1, 10, "the resend refused")
            # the refusals come while the outbox cannot be written (SQLite refuses writes, as
            # on a full disk whose WAL cannot grow): the broker is paused while 30 outputs
            # go out, the outbox is made read-only, then the broker answers
            broker._process.send_signal(signal.SIGSTOP)
            try:
                for i in range(30):
                    publisher.publish(publisher.topics.output("digit" if i % 2 else "parity"),
                                      {"i": i})
                wait_until(lambda: outbox.depth == 31 and not publisher.pending - 31, 10,
                           "30 outputs stored and sent")
                read_only(outbox, True)
            finally:
                broker._process.send_signal(signal.SIGCONT)
            wait_until(lambda: sum(publisher.refused.values()) >= 31, 10, "30 refusals")
            for i in range(30, 35):  # waiting in memory for the outbox
                publisher.publish(publisher.topics.output("digit"), {"i": i})
            time.sleep(1.0)  # the sender tries to write, and fails, a few times
            read_only(outbox, False)
            wait_until(lambda: sum(publisher.refused.values()) >= 36, 10, "35 refusals")
            health = publisher.health()
            assert health["state"] == "degraded", health
            assert set(health["refused"]) == {"135 Not authorized"}, health
            assert outbox.depth == 36 and publisher.pending == 36, "refused is not delivered"
            refusal_lines = [r for r in caplog.records if "refused a publication" in r.message]
            assert len(refusal_lines) == 2, "logged once per topic"  # digit and parity
            # a response on a denied topic: counted, dropped, not sent again
            publisher.respond(f"mlink/{DEVICE}/models/x/response", {"status": "ok"})
            wait_until(lambda: publisher.responses_dropped == 1, 10, "the response dropped")

            acl.write_text(ALLOW_ALL)
            broker._process.send_signal(signal.SIGHUP)  # mosquitto reloads its ACL
            assert publisher.drain(30), "the refused outputs are sent again once allowed"
            assert watcher.wait_for(36) == set(range(35)) | {100}
            time.sleep(0.5)
            assert not any(p.get("possible_duplicate") for p in watcher.payloads
                           if p["i"] != 100), \
                "a refused output reached no one: its next copy is not a duplicate"
            copies = [p for p in watcher.payloads if p["i"] == 100]
            assert len(copies) == 2 and copies[1].get("possible_duplicate"), \
                "the refused resend of a delivered output is still marked when it goes"
            assert publisher.responses_dropped == 1
            assert publisher.health()["refused_waiting"] == 0
        finally:
            publisher.close(1)
            watcher.stop()


def read_only(outbox: Outbox, on: bool) -> None:
    """SQLite refuses every write to the outbox (`on`), or takes them again."""
    with outbox._lock:
        outbox._db.execute(f"PRAGMA query_only = {int(on)}")


def test_a_full_disk_is_reported_counted_and_survived(persistent_broker,
                                                      tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite's own "database or disk is full" (SQLITE_FULL, made by a page limit on the
    outbox) during a broker outage."""
    from agent.transport import STAGED_MAX

    monkeypatch.setattr("agent.transport.publisher.DRAIN_DISK_FULL_S", 0.5)  # 3 s in service

    broker = persistent_broker
    watcher = Subscriber(broker.port, f"mlink/{DEVICE}/models/#", key="i", client_id="w2")
    outbox = Outbox(tmp_path / "outbox.sqlite")
    publisher = Publisher(MqttConfig(port=broker.port, client_id="full-disk"), DEVICE, outbox)
    publisher.connect(10)
    caplog.set_level(logging.WARNING, logger="agent.transport")
    total = 3 * STAGED_MAX
    try:
        broker.stop()
        wait_until(lambda: not publisher.connected, 10, "the outage")
        with outbox._lock:
            pages = outbox._db.execute("PRAGMA page_count").fetchone()[0]
            outbox._db.execute(f"PRAGMA max_page_count = {pages + 10}")
        started = time.monotonic()
        for i in range(total):
            publisher.publish(publisher.topics.output("digit"), {"i": i})
        assert time.monotonic() - started < 60, "the loop was held by the full disk"
        health = wait_until(lambda: publisher.health() if publisher.disk_full else None, 10,
                            "disk_full")
        assert health["state"] == "degraded" and health["disk_full"], health
        assert any("disk_full" in p for p in health["problems"]), health
        assert publisher.unstored > 0
        wait_until(lambda: outbox.depth + publisher.sender.staged + publisher.unstored
                   == total, 10, "every output stored, waiting or counted")
        assert sum("cannot be written" in r.message for r in caplog.records) == 1
        started = time.monotonic()  # a stop (SIGTERM) now: nothing can be stored nor deleted
        assert not publisher.drain(30)
        assert time.monotonic() - started < 5, "a drain on a full disk gives up early"

        with outbox._lock:
            outbox._db.execute("PRAGMA max_page_count = 1073741823")
        broker.start()
        assert publisher.drain(60), "delivered once the disk has room and the broker is back"
        assert not publisher.disk_full and publisher.health()["state"] == "ok"
        delivered = watcher.wait_for(total - publisher.unstored, 30)
        assert len(delivered) == total - publisher.unstored
        assert any("written again" in r.message for r in caplog.records)
    finally:
        publisher.close(1)
        watcher.stop()


def test_a_reply_the_broker_drops_us_for_is_sent_again_once_then_dropped(tmp_path: Path) -> None:
    """The issue's stall at the transport: a publication Mosquitto answers by dropping the
    connection (a topic of 300 levels) was taken back at every reconnect and sent again, about
    once a second, forever, and nothing else went out. Now it is sent again once, then
    dropped and counted; the outputs flow."""
    with LocalBroker() as broker:
        watcher = Subscriber(broker.port, f"mlink/{DEVICE}/models/#", key="i", client_id="w3")
        outbox = Outbox(tmp_path / "outbox.sqlite")
        publisher = Publisher(MqttConfig(port=broker.port, client_id="dropped"), DEVICE, outbox)
        publisher.connect(10)
        try:
            publisher.respond(f"mlink/{DEVICE}/reply/" + "/".join(["l"] * 300), {"x": 1})
            wait_until(lambda: publisher.responses_dropped == 1, 30, "the reply dropped")
            for i in range(50):
                publisher.publish(publisher.topics.output("digit"), {"i": i})
            assert publisher.drain(20)
            assert watcher.wait_for(50) == set(range(50))
            connects = publisher.connects
            time.sleep(3)
            assert publisher.connects == connects <= 3, "no reconnect loop"
            assert publisher.health()["responses_dropped"] == 1
        finally:
            publisher.close(1)
            watcher.stop()
