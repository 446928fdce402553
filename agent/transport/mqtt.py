"""The MQTT client under the DESIGN contract: paho-mqtt 2.x (CallbackAPIVersion.VERSION2),
MQTT v5 by default (3.1.1 selectable), login and TLS from `[mqtt]`, reconnecting with
back-off. `availability` is retained: `online` after each connect, `stopped` on a clean exit,
`offline` as the LWT.

paho's callbacks only record and signal: PUBACKs (and those with a failure reason code, which
are not deliveries) are queued for the outbox sender (agent/transport/sender.py) to apply,
incoming requests are handed to their handlers (which queue them; agent/control). Retained
topics (status, config state) keep only their latest value, republished after every connect.
Responses and retained messages are published here directly; a refusal of one is counted,
by reason code, in the delivery health this client reports.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config import MqttConfig
from agent.transport.topics import Topics

log = logging.getLogger(__name__)

WINDOW = 400  # outbox messages handed to paho and not yet acknowledged, at most (paho puts
# 20 of them on the wire at a time, Mosquitto's default receive maximum, and sends the next
# as each PUBACK comes in, without waiting for the sender thread)
WAKE_ACKS = WINDOW // 2  # PUBACKs that wake the sender (else the next output or 0.5 s does)
DEGRADED_FOR_S = 120.0  # health stays `degraded` this long after the last refusal
MAX_TRACKED_TOPICS = 256  # topics remembered for "logged once per topic"

MessageHandler = Callable[[mqtt.MQTTMessage], None]


class PublishError(RuntimeError):
    pass


# One encoder for every payload: json.dumps with options builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def dumps(payload: Any) -> bytes:
    return _ENCODER.encode(payload).encode("utf-8")


def encode(payload: Any) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode("utf-8")
    return dumps(payload)


def secure(client: mqtt.Client, config: MqttConfig) -> None:
    """Login and TLS from `[mqtt]`; the password is read now, never kept in the config."""
    if config.username is not None:
        client.username_pw_set(config.username, config.password())
    tls = config.tls
    if tls is None:
        return
    try:
        client.tls_set(
            ca_certs=str(tls.ca_file) if tls.ca_file else None,
            certfile=str(tls.cert_file) if tls.cert_file else None,
            keyfile=str(tls.key_file) if tls.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise PublishError(f"mqtt.tls: cannot load the certificates: {exc}") from None
    client.tls_insecure_set(not tls.verify_hostname)


def try_connect(config: MqttConfig, device_id: str, timeout_s: float = 5.0) -> str | None:
    """Connect and disconnect once with `[mqtt]`'s login and TLS, as a client of its own (it
    publishes nothing, so it neither shows the box online nor takes its client id): None when
    the broker accepted, else why not."""
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                         client_id=f"mlink-check-{device_id}-{os.getpid()}",
                         protocol=mqtt.MQTTv5 if config.protocol == "5" else mqtt.MQTTv311)
    answered = threading.Event()
    outcome: list[str | None] = []

    def on_connect(_client: mqtt.Client, _userdata: Any, _flags: Any, reason_code: Any,
                   _properties: Any) -> None:
        outcome.append(f"refused: {reason_code}" if reason_code.is_failure else None)
        answered.set()

    client.on_connect = on_connect
    where = f"{config.host}:{config.port}"
    try:
        secure(client, config)
        client.connect(config.host, config.port, config.keepalive_s)
    except ssl.SSLError as exc:
        return f"TLS handshake with {where} failed: {getattr(exc, 'verify_message', None) or exc}"
    except (OSError, PublishError) as exc:
        return f"cannot connect to {where}: {getattr(exc, 'strerror', None) or exc}"
    client.loop_start()
    try:
        if not answered.wait(timeout_s):
            return f"no answer from the broker at {where} within {timeout_s:.0f}s"
        return None if outcome[0] is None else f"the broker at {where} {outcome[0]}"
    finally:
        client.disconnect()
        client.loop_stop()


class MqttClient:
    """The connection: paho's client, its callbacks, subscriptions, retained topics,
    responses, and the count of what the broker refused.

    `take_back`: at each connect, what paho still holds unacknowledged is taken back from it
    (`taken_back`) for the outbox sender to publish again marked, rather than let paho resend
    it unchanged. `wake` is called whenever the sender has something to do."""

    def __init__(self, config: MqttConfig, topics: Topics, *, take_back: bool = False,
                 wake: Callable[[], None] = lambda: None) -> None:
        self.config = config
        self.topics = topics
        self.v5 = config.protocol == "5"
        self._take_back = take_back
        self._keep_pending = not take_back  # no outbox: `pending` is paho's own queue
        self._wake = wake
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=config.client_id or f"mlink-agent-{topics.device_id}",
            protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311,
        )
        self.client.will_set(topics.availability, "offline", qos=1, retain=True)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self._connected = threading.Event()
        self._connack = threading.Event()  # the broker answered the first CONNECT
        self._refused_login: str | None = None
        self._last_disconnect: str | None = None
        self._handlers: dict[str, MessageHandler] = {}
        self._retained: dict[str, bytes] = {}
        self._retained_lock = threading.Lock()
        self.resend_retained_due = False
        self.closing = False
        self.connects = 0
        self.published = 0  # messages published here (not through the outbox)
        # recorded by paho's thread, applied by the sender's
        self.acked_mids: deque[int] = deque()
        self.refused_mids: deque[tuple[int, int, str]] = deque()  # mid, code, name (>= 0x80)
        self.taken_back: deque[list[mqtt.MQTTMessage]] = deque()  # from paho, per reconnect
        self._direct: dict[int, str] = {}  # paho mid -> topic of responses and retained
        self._resent: set[int] = set()  # mids of responses already sent again once
        self._pending: list[mqtt.MQTTMessageInfo] = []  # without an outbox: paho's queue
        self.refused: dict[str, int] = {}  # "<code> <name>" -> count
        self._refused_topics: dict[str, int] = {}
        self._last_refusal: float | None = None
        self.responses_dropped = 0

    # -- paho callbacks: record and signal only ---------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        if reason_code.is_failure:
            log.error("broker refused the connection: %s", reason_code)
            self._refused_login = str(reason_code)
            self._connack.set()
            return
        log.info("connected to %s:%s", self.config.host, self.config.port)
        if self._take_back:  # before paho resends them unmarked (agent/transport/sender.py)
            self.taken_back.append(client.drop_out_messages())
        client.publish(self.topics.availability, "online", qos=1, retain=True)
        for topic in self._handlers:
            client.subscribe(topic, qos=1)
        self.connects += 1
        self.resend_retained_due = True
        self._connected.set()
        self._connack.set()
        self._wake()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        self._connected.clear()
        self._last_disconnect = str(reason_code)
        if not self.closing:
            log.warning("disconnected from the broker: %s", reason_code)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any,
                    properties: Any) -> None:
        if getattr(reason_code, "is_failure", False):  # e.g. 135 Not authorized (an ACL)
            self.refused_mids.append((mid, int(reason_code.value), str(reason_code)))
            self._wake()
            return
        self.acked_mids.append(mid)
        if len(self.acked_mids) >= WAKE_ACKS:  # else applied at the next wake-up
            self._wake()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        for topic_filter, handler in self._handlers.items():
            if mqtt.topic_matches_sub(topic_filter, message.topic):
                try:
                    handler(message)
                except Exception:
                    log.exception("handler for %s failed", message.topic)
                return

    # -- connection ----------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def subscribe(self, topic_filter: str, handler: MessageHandler) -> None:
        """Deliver messages on `topic_filter` to `handler` (called in paho's thread: it must
        not block). Subscriptions are renewed after every connect."""
        self._handlers[topic_filter] = handler
        if self.connected:
            self.client.subscribe(topic_filter, qos=1)

    def connect(self, timeout_s: float = 10.0) -> None:
        """Connect, retrying an unreachable broker until `timeout_s`; a refused login or a
        failed TLS handshake fails at once with a message that says which. Later outages are
        paho's to reconnect. `wait_connected` waits for the broker's answer."""
        secure(self.client, self.config)
        where = f"{self.config.host}:{self.config.port}"
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.client.connect(self.config.host, self.config.port, self.config.keepalive_s)
                break
            except ssl.SSLError as exc:
                raise PublishError(f"TLS handshake with the MQTT broker at {where} failed: "
                                   f"{getattr(exc, 'verify_message', None) or exc} "
                                   f"(check [mqtt.tls])") from None
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise PublishError(f"no connection to the MQTT broker at {where} within "
                                       f"{timeout_s:.0f}s: {exc.strerror or exc}") from None
                time.sleep(0.5)
        self.client.loop_start()
        self._deadline = deadline

    def wait_connected(self, timeout_s: float) -> None:
        """Wait for the broker's answer to the first CONNECT; raise if it refused or none
        came."""
        where = f"{self.config.host}:{self.config.port}"
        self._connack.wait(max(0.0, self._deadline - time.monotonic()) + 1.0)
        if self._refused_login is not None:
            login = f"user {self.config.username!r}" if self.config.username else "anonymous"
            raise PublishError(f"the MQTT broker at {where} refused the connection "
                               f"({login}): {self._refused_login} (check [mqtt] username and "
                               f"password)")
        if not self._connected.is_set():
            why = f": {self._last_disconnect}" if self._last_disconnect else ""
            raise PublishError(f"no connection to the MQTT broker at {where} within "
                               f"{timeout_s:.0f}s{why}")

    # -- publishing ------------------------------------------------------------------------------
    def publish(self, topic: str, data: bytes, qos: int,
                properties: Properties | None = None) -> mqtt.MQTTMessageInfo:
        """Hand one message to paho (the sender's outbox rows)."""
        return self.client.publish(topic, data, qos=qos, properties=properties)

    def retain(self, topic: str, data: bytes, qos: int) -> None:
        """A retained topic: its latest value is kept and republished after each connect."""
        with self._retained_lock:
            self._retained[topic] = data
        if self.connected:
            self.send_direct(topic, data, qos, True)

    def resend_retained(self) -> None:
        """After a connect (the sender calls it): every retained topic's latest value."""
        if not self.resend_retained_due:
            return
        self.resend_retained_due = False
        with self._retained_lock:
            retained = list(self._retained.items())
        for topic, data in retained:
            self.send_direct(topic, data, 1, True)

    def send_direct(self, topic: str, data: bytes, qos: int, retain: bool
                    ) -> mqtt.MQTTMessageInfo:
        """Publish without the outbox; without one at all, counted in `pending` until it is
        acknowledged. The caller may wait for the PUBACK on what this returns."""
        info = self.client.publish(topic, data, qos=qos, retain=retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise PublishError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        self.published += 1
        if qos:
            self._track_direct(info.mid, topic)
        if not self._keep_pending:
            return info  # the outbox's pending; paho's copies may be taken back at a reconnect
        self._pending.append(info)
        if len(self._pending) > 1000:
            self._pending = [i for i in self._pending if not i.is_published()]
        return info

    @property
    def pending(self) -> int:
        """Without an outbox: the messages paho has not had acknowledged yet."""
        self._pending = [i for i in self._pending if not i.is_published()]
        return len(self._pending)

    def respond(self, topic: str, data: bytes, correlation_data: bytes | None = None) -> None:
        """A response (not retained, QoS 1), echoing the request's MQTT v5 CorrelationData."""
        properties = None
        if self.v5 and correlation_data is not None:
            properties = Properties(PacketTypes.PUBLISH)
            properties.CorrelationData = correlation_data
        info = self.client.publish(topic, data, qos=1, properties=properties)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            self.count_refused(topic, info.rc, mqtt.error_string(info.rc), response=True)
            return
        self._track_direct(info.mid, topic)

    def _track_direct(self, mid: int, topic: str) -> None:
        self._direct[mid] = topic
        while len(self._direct) > 10 * WINDOW:  # acknowledged long ago, or never will be
            self._direct.pop(next(iter(self._direct)))

    def settle_direct(self, mid: int) -> None:
        """A PUBACK that was no outbox row's: a response's or a retained message's."""
        self._direct.pop(mid, None)

    def refused_direct(self, mid: int, code: int, name: str) -> None:
        """A refusal that was no outbox row's: counted, the response dropped."""
        self.count_refused(self._direct.pop(mid, "?"), code, name, response=True)

    def resend_taken_back(self, taken: list[mqtt.MQTTMessage], outbox_mids: set[int]) -> None:
        """Responses taken back from paho at a reconnect are published again as they were
        (once: one in flight at two disconnects is dropped, counted); outbox rows
        (`outbox_mids`) and retained messages are the sender's and `resend_retained`'s."""
        for message in taken:
            if message.retain or message.mid in outbox_mids:
                continue
            topic = message.topic
            if message.mid in self._resent:  # in flight at two disconnects: let it go
                self._resent.discard(message.mid)
                self.count_refused(topic, -1, "dropped twice by the broker", response=True)
                continue
            info = self.client.publish(topic, message.payload, qos=message.qos,
                                       properties=message.properties)
            self._resent.add(info.mid)
            while len(self._resent) > 10 * WINDOW:
                self._resent.pop()

    # -- what the broker refused -----------------------------------------------------------------
    def count_refused(self, topic: str, code: int, name: str, response: bool = False) -> None:
        """A publication the broker refused: counted by reason, logged once per topic; a
        response is dropped (never sent again), an output stays in the outbox."""
        key = f"{code} {name}"
        self.refused[key] = self.refused.get(key, 0) + 1
        self._last_refusal = time.monotonic()
        if response:
            self.responses_dropped += 1
        if topic not in self._refused_topics:
            if len(self._refused_topics) >= MAX_TRACKED_TOPICS:
                self._refused_topics.pop(next(iter(self._refused_topics)))
            self._refused_topics[topic] = 0
            log.error("the broker refused a publication on %s: %s (%s; logged once per "
                      "topic, counted in status.delivery)", topic, name,
                      "response dropped" if response else "kept in the outbox, sent again "
                      "later")
        self._refused_topics[topic] += 1

    @property
    def refused_recently(self) -> bool:
        return self._last_refusal is not None and \
            time.monotonic() - self._last_refusal < DEGRADED_FOR_S

    # -- shutdown ------------------------------------------------------------------------------
    def say_stopped(self) -> None:
        """A clean exit: `stopped` on availability, before the disconnect (no LWT then)."""
        if self.connected:
            info = self.client.publish(self.topics.availability, "stopped", qos=1, retain=True)
            info.wait_for_publish(timeout=5.0)

    def disconnect(self) -> None:
        self.closing = True
        self.client.disconnect()
        self.client.loop_stop()
