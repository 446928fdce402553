"""The agent's one door to MQTT: a `Publisher` is the client (agent/transport/mqtt.py) and,
given an outbox, its sender (agent/transport/sender.py), under one agent's topics
(agent/transport/topics.py). What the loop, the status and control call."""

from __future__ import annotations

import logging
import time
from typing import Any

from paho.mqtt.client import MQTTMessageInfo

from agent.config import MqttConfig
from agent.transport.mqtt import MessageHandler, MqttClient, encode
from agent.transport.outbox import Outbox
from agent.transport.sender import WAKE_EVERY_S, OutboxSender
from agent.transport.topics import Topics

log = logging.getLogger(__name__)

DRAIN_DISK_FULL_S = 3.0  # a drain gives up after the outbox's disk was full this long


class Publisher:
    def __init__(self, config: MqttConfig, device_id: str, outbox: Outbox | None = None,
                 gather_s: float = WAKE_EVERY_S, groups: tuple[str, ...] = ()) -> None:
        self.config = config
        self.topics = Topics(config.prefix, device_id, groups)
        self.outbox = outbox
        self.sender: OutboxSender | None = None
        self.mqtt = MqttClient(config, self.topics, take_back=outbox is not None,
                               wake=self._wake)
        if outbox is not None:
            self.sender = OutboxSender(self.mqtt, outbox, gather_s)
        self.qos0_unsent = 0  # per-model QoS 0 messages not sent: the broker was away

    def _wake(self) -> None:
        if self.sender is not None:
            self.sender.wake.set()

    # -- connection ----------------------------------------------------------------------------
    @property
    def v5(self) -> bool:
        return self.mqtt.v5

    @property
    def connected(self) -> bool:
        return self.mqtt.connected

    @property
    def connects(self) -> int:
        return self.mqtt.connects

    def subscribe(self, topic_filter: str, handler: MessageHandler) -> None:
        """Deliver messages on `topic_filter` to `handler` (called in paho's thread: it must
        not block). Subscriptions are renewed after every connect."""
        self.mqtt.subscribe(topic_filter, handler)

    def connect(self, timeout_s: float = 10.0) -> None:
        """Connect, retrying an unreachable broker until `timeout_s`; a refused login or a
        failed TLS handshake fails at once with a message that says which. Later outages are
        paho's to reconnect."""
        self.mqtt.connect(timeout_s)
        if self.sender is not None:
            self.sender.start()
        self.mqtt.wait_connected(timeout_s)

    # -- publishing ------------------------------------------------------------------------------
    @property
    def next_seq(self) -> int:
        """The first frame message's `seq` for this process: on from the outbox's last."""
        return self.outbox.next_key if self.outbox is not None else 1

    def publish(self, topic: str, payload: Any, qos: int | None = None,
                retain: bool = False, key: int | None = None) -> None:
        """Outputs (not retained) go through the durable outbox when there is one (`key`: a
        frame message's `seq`, kept with its row); retained topics keep their latest value
        and are republished after each connect."""
        data = encode(payload)
        qos = self.config.qos if qos is None else qos
        if retain:
            self.mqtt.retain(topic, data, qos)
        elif self.sender is not None:
            self.sender.stage(topic, data, qos, key)
        else:
            self.mqtt.send_direct(topic, data, qos, False)

    def publish_now(self, topic: str, payload: Any, qos: int = 0) -> None:
        """Not through the outbox (`[publish.per_model.<id>] topic = "qos0"`): while the broker
        is away it is not sent, and counted (`status.delivery.qos0_unsent`)."""
        if self.connected:
            self.mqtt.send_direct(topic, encode(payload), qos, False)
        else:
            self.qos0_unsent += 1

    def send(self, topic: str, data: bytes, retain: bool) -> MQTTMessageInfo:
        """QoS 1, straight to MQTT: not through the outbox and, retained, not published again
        after a reconnect (an upload's chunks, agent.uploads); the caller waits for the
        PUBACK on what this returns. Lost if the connection drops before it."""
        return self.mqtt.send_direct(topic, data, 1, retain)

    def respond(self, topic: str, payload: Any, correlation_data: bytes | None = None) -> None:
        """A response (not retained, QoS 1), echoing the request's MQTT v5 CorrelationData."""
        self.mqtt.respond(topic, encode(payload), correlation_data)

    # -- state ---------------------------------------------------------------------------------
    @property
    def published(self) -> int:
        staged = self.sender.staged_total if self.sender is not None else 0
        return self.mqtt.published + staged

    @property
    def refused(self) -> dict[str, int]:
        return self.mqtt.refused

    @property
    def responses_dropped(self) -> int:
        return self.mqtt.responses_dropped

    @property
    def disk_full(self) -> bool:
        return self.sender is not None and self.sender.disk_full

    @property
    def unstored(self) -> int:
        return self.sender.unstored if self.sender is not None else 0

    @property
    def frames_skipped(self) -> dict[str, int]:
        return self.sender.frames_skipped if self.sender is not None else {}

    @property
    def pending(self) -> int:
        """Messages not yet acknowledged: the outbox depth, or paho's own queue."""
        return self.sender.pending if self.sender is not None else self.mqtt.pending

    def hold_frame(self) -> bool:
        """Back-pressure (agent/transport/sender.py): True while the loop should skip the
        frame; never without an outbox."""
        return self.sender is not None and self.sender.hold_frame()

    def health(self) -> dict[str, Any]:
        """`degraded` while outputs wait refused or a refusal came in the last two minutes,
        the outbox's disk is full, or the loop skips frames for a full outbox."""
        sender = self.sender
        problems = sender.problems() if sender is not None else []
        if self.mqtt.refused_recently and not (sender and sender.refused_waiting):
            problems.insert(0, "the broker refuses publications (see refused)")
        return {"state": "degraded" if problems else "ok", "problems": problems,
                "connected": self.connected, "refused": dict(self.refused),
                "refused_waiting": sender.refused_waiting if sender else 0,
                "responses_dropped": self.responses_dropped,
                "disk_full": self.disk_full, "unstored": self.unstored,
                "frames_skipped": dict(self.frames_skipped), "qos0_unsent": self.qos0_unsent}

    # -- shutdown ------------------------------------------------------------------------------
    def drain(self, timeout_s: float = 30.0) -> bool:
        """Wait until every output is acknowledged; False if time ran out (with an outbox,
        what is left stays on disk and is replayed at the next start). While the outbox's
        disk is full nothing can be stored nor deleted: after DRAIN_DISK_FULL_S of it the
        wait ends early (a stop on a full disk takes seconds, not the whole `timeout_s`)."""
        started = time.monotonic()
        full_since: float | None = None
        while self.pending:
            now = time.monotonic()
            full_since = (full_since or now) if self.disk_full else None
            if now - started > timeout_s or (
                    full_since is not None and now - full_since > DRAIN_DISK_FULL_S):
                if self.sender is None:
                    log.error("%d messages still unacknowledged after %.0fs", self.pending,
                              now - started)
                else:
                    self.sender.drain_log(now - started)
                return False
            self._wake()
            time.sleep(0.01)
        return True

    def close(self, timeout_s: float = 30.0) -> bool:
        """Clean exit: drain (`timeout_s` 0: not again), publish `stopped`, disconnect (so the
        LWT is not sent)."""
        drained = self.drain(timeout_s) if timeout_s > 0 else not self.pending
        self.mqtt.say_stopped()
        self.mqtt.closing = True
        if self.sender is not None:
            self.sender.stop()
        self.mqtt.disconnect()
        if self.outbox is not None:
            self.outbox.close()
        return drained
