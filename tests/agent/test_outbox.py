"""The durable outbox: written before publishing, deleted on PUBACK, replayed after a broker
outage and after a restart, bounded with counted drop-oldest; what is sent again after its
PUBACK was lost (in this process or by an earlier one) carries `possible_duplicate`. Against a
real Mosquitto, with a relay that swallows the broker's answers (tests/support/faults.py)."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from agent.config import MqttConfig
from agent.transport import POSSIBLE_DUPLICATE, Publisher
from agent.transport.outbox import Outbox
from tests.support.agent_process import Subscriber
from tests.support.faults import LossyLink


def test_put_ack_and_drop_oldest_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path, max_messages=10)
    ids = [box.put(f"t/{i}", json.dumps({"i": i}).encode()) for i in range(15)]
    assert box.depth == 10 and box.dropped == 5
    assert [m.id for m in box.after(0, 100)] == ids[5:]  # the oldest five went
    assert box.ack([ids[5], ids[6], ids[0]]) == 2  # an already dropped id is ignored
    assert box.depth == 8
    box.close()

    again = Outbox(path, max_messages=10)
    assert again.depth == 8 and again.recovered == 8 and again.dropped == 5
    first = again.after(0, 1)[0]
    assert first.topic == "t/7" and json.loads(first.payload) == {"i": 7}
    again.close()


def _publisher(port: int, outbox_path: Path) -> Publisher:
    config = MqttConfig(port=port, client_id="outbox-test-agent")
    publisher = Publisher(config, "box", Outbox(outbox_path))
    publisher.mqtt.client.reconnect_delay_set(min_delay=0.1, max_delay=0.5)
    return publisher


def test_frame_numbers_go_on_after_the_rows_are_acknowledged_and_reopened(
        tmp_path: Path) -> None:
    """A frame message's `seq` is its row's key: the highest stays known once its row is
    gone, so a restarted agent never numbers a new message like one that may be replayed."""
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path)
    assert box.next_key == 1
    ids = box.store([("f/0", b"{}", 1, 7), ("f/0", b"{}", 1, 8), ("m/x", b"{}", 1, None)])
    assert box.next_key == 9
    box.ack(ids)
    box.close()
    again = Outbox(path)
    assert again.depth == 0 and again.next_key == 9
    again.close()


def test_an_outbox_from_before_keys_opens_with_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(str(path))
    db.executescript("CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT "
                     "NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL, created REAL NOT "
                     "NULL, sent INTEGER NOT NULL DEFAULT 0);"
                     "INSERT INTO outbox (topic, payload, qos, created) "
                     "VALUES ('t', x'7b7d', 1, 0);")
    db.close()
    box = Outbox(path)
    assert box.depth == 1 and box.next_key == 1
    box.store([("f/0", b"{}", 1, 3)])
    assert box.next_key == 4
    box.close()


def test_steady_outputs_cost_one_transaction_per_wake_up(persistent_broker,
                                                          tmp_path: Path) -> None:
    """While the broker keeps up, each batch is stored as sent and published from memory,
    and acknowledged rows go in the next batch's transaction: the outbox is never read back
    or marked row by row, every output arrives once, unmarked, and none is left on disk."""
    topic = "mlink/box/models/steady/output"
    subscriber = Subscriber(persistent_broker.port, topic, client_id="steady-sub")
    publisher = _publisher(persistent_broker.port, tmp_path / "outbox.sqlite")
    assert publisher.outbox is not None
    calls: list[str] = []
    for name in ("after", "mark_sent"):
        method = getattr(publisher.outbox, name)
        setattr(publisher.outbox, name,
                lambda *a, _m=method, _n=name: (calls.append(_n), _m(*a))[1])
    publisher.connect()
    publisher.publish(topic, {"i": -1})  # the first goes after the connect's own work
    assert publisher.drain(10)
    calls.clear()
    for frame in range(10):  # 50 outputs: never more than the window (100) in flight
        for i in range(5):
            publisher.publish(topic, {"i": frame * 5 + i})
        time.sleep(0.01)
    assert subscriber.wait_for(51) == set(range(-1, 50))
    assert publisher.drain(10) and publisher.pending == 0
    assert calls == []
    assert len(subscriber.settled()) == 51 and len(subscriber.payloads) == 51
    assert not any(POSSIBLE_DUPLICATE in p for p in subscriber.payloads)
    assert publisher.close(5)
    subscriber.stop()


def test_outputs_published_during_an_outage_arrive_after_reconnect(persistent_broker,
                                                                    tmp_path: Path) -> None:
    topic = "mlink/box/models/m/output"
    subscriber = Subscriber(persistent_broker.port, topic)
    publisher = _publisher(persistent_broker.port, tmp_path / "outbox.sqlite")
    publisher.connect()
    for i in range(50):
        publisher.publish(topic, {"i": i})
    assert publisher.drain(10)

    persistent_broker.stop()
    for i in range(50, 300):
        publisher.publish(topic, {"i": i})
    time.sleep(0.3)
    assert publisher.pending >= 250 - 100  # at most the in-flight window left the disk
    persistent_broker.start()

    assert subscriber.wait_for(300) == set(range(300))
    assert publisher.drain(10) and publisher.pending == 0
    assert publisher.close(5)
    subscriber.stop()


def test_unacknowledged_outputs_are_replayed_by_the_next_process(persistent_broker,
                                                                  tmp_path: Path) -> None:
    topic = "mlink/box/models/m/output"
    path = tmp_path / "outbox.sqlite"
    subscriber = Subscriber(persistent_broker.port, topic)
    first = _publisher(persistent_broker.port, path)
    first.connect()
    persistent_broker.stop()
    for i in range(40):
        first.publish(topic, {"i": i})
    assert not first.close(0.5)  # not drained: the messages stay on disk
    assert Outbox(path).depth == 40

    persistent_broker.start()
    second = _publisher(persistent_broker.port, path)
    assert second.outbox is not None and second.outbox.recovered == 40
    second.connect()
    assert subscriber.wait_for(40) == set(range(40))
    assert second.close(10)
    assert Outbox(path).depth == 0
    assert not any(POSSIBLE_DUPLICATE in p for p in subscriber.payloads), \
        "never handed to MQTT before, so not marked"
    subscriber.stop()


def _copies(subscriber: Subscriber) -> dict[int, list[dict]]:
    copies: dict[int, list[dict]] = {}
    for payload in subscriber.payloads:
        copies.setdefault(payload["i"], []).append(payload)
    return copies


def _extra_copies_are_marked(copies: dict[int, list[dict]]) -> int:
    """Every copy after the first is marked; returns how many outputs arrived twice."""
    for i, seen in copies.items():
        assert all(p.get(POSSIBLE_DUPLICATE) is True for p in seen[1:]), (i, seen)
    return sum(len(seen) > 1 for seen in copies.values())


def test_outputs_whose_puback_was_lost_are_sent_again_marked(persistent_broker,
                                                             tmp_path: Path) -> None:
    topic = "mlink/box/models/m/output"
    subscriber = Subscriber(persistent_broker.port, topic)
    link = LossyLink(persistent_broker.port)
    publisher = _publisher(link.port, tmp_path / "outbox.sqlite")
    publisher.connect()
    for i in range(20):
        publisher.publish(topic, {"i": i})
    assert publisher.drain(10)

    link.mute()  # the broker gets the next ones, their PUBACKs are lost
    for i in range(20, 60):
        publisher.publish(topic, {"i": i})
    reached = subscriber.settled() - set(range(20))  # paho sends 20, then awaits PUBACKs
    assert len(reached) >= 10 and publisher.pending == 40 and link.swallowed > 0
    link.cut()

    assert subscriber.wait_for(60) == set(range(60))
    assert publisher.drain(10) and publisher.close(5)
    copies = _copies(subscriber)
    assert _extra_copies_are_marked(copies) == len(reached)  # each one that got through
    assert all(len(copies[i]) == 1 and POSSIBLE_DUPLICATE not in copies[i][0]
               for i in range(20)), "acknowledged ones are sent once, unmarked"
    link.close()
    subscriber.stop()


def test_a_restart_marks_what_the_earlier_process_had_sent(persistent_broker,
                                                           tmp_path: Path) -> None:
    topic = "mlink/box/models/m/output"
    path = tmp_path / "outbox.sqlite"
    subscriber = Subscriber(persistent_broker.port, topic)
    link = LossyLink(persistent_broker.port)
    first = _publisher(link.port, path)
    first.connect()
    link.mute()
    for i in range(30):
        first.publish(topic, {"i": i})
    reached = subscriber.settled()
    link.close()
    while first.connected:
        time.sleep(0.01)
    assert not first.close(0.5)  # no PUBACK came: all 30 stay on disk, marked as sent
    later = Outbox(path)  # never handed to MQTT: published unmarked by the next process
    later.put_many([(topic, json.dumps({"i": i}).encode(), 1) for i in range(30, 40)])
    later.close()

    second = _publisher(persistent_broker.port, path)
    second.connect()
    assert subscriber.wait_for(40) == set(range(40))
    assert second.close(10) and Outbox(path).depth == 0
    copies = _copies(subscriber)
    assert _extra_copies_are_marked(copies) == len(reached) > 0
    assert all(POSSIBLE_DUPLICATE not in copies[i][0] for i in range(30, 40))
    assert all(copies[i][-1].get(POSSIBLE_DUPLICATE) for i in range(30))
    subscriber.stop()
