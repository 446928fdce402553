"""MQTT under the DESIGN contract (root `<prefix>/<device_id>/`).

paho-mqtt 2.x with CallbackAPIVersion.VERSION2, MQTT v5 by default (3.1.1 selectable),
reconnecting with back-off. `availability` is retained: `online` after each connect,
`stopped` on a clean exit, `offline` as the LWT.

Outputs go through the durable outbox (agent/outbox.py): `publish()` only stages them; the
sender thread writes what is staged to SQLite in one transaction (the loop never waits for
the disk), then publishes from SQLite with a bounded window of messages in flight; a message
is deleted on its PUBACK. Nothing is handed to paho while the connection is down, so what
accumulates during a broker outage waits on disk and memory stays bounded.

After a reconnect the messages that were in flight are taken back from paho (which would
resend them unchanged) and published again from the outbox marked `"possible_duplicate":
true`: each may have reached the broker with its PUBACK lost. Rows handed to MQTT by an
earlier process are marked the same way when replayed; rows never sent are not. So a
subscriber sees every output at least once, and every extra copy carries the mark.
Retained topics (status, config state) keep only their latest value, republished after every
connect.

paho's callbacks only record and signal: acknowledgements are applied to SQLite by the sender
thread, incoming requests are handed to their handlers (which queue them; agent/control.py).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sqlite3
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
from agent.outbox import Message, Outbox

log = logging.getLogger(__name__)

WINDOW = 400  # outbox messages handed to paho and not yet acknowledged, at most (paho puts
# 20 of them on the wire at a time, Mosquitto's default receive maximum, and sends the next
# as each PUBACK comes in, without waiting for the sender thread)
WAKE_ACKS = WINDOW // 2  # PUBACKs that wake the sender (else the next output or 0.5 s does)
WAKE_EVERY_S = 0.005  # the sender wakes at most this often: each wake-up is 1-3 SQLite
# transactions, so at full rate it stores and sends hundreds of rows per wake-up, not a few
REFUSED_RETRY_S = (5.0, 60.0)  # refused outputs are sent again after this, doubling to max
DEGRADED_FOR_S = 120.0  # health stays `degraded` this long after the last refusal
MAX_TRACKED_TOPICS = 256  # topics remembered for "logged once per topic"
STAGED_MAX = 10_000  # outputs accepted but not yet on disk; beyond it publish() waits
HOLD_AT = 0.9  # the loop skips frames while the outbox holds this share of its cap
POSSIBLE_DUPLICATE = "possible_duplicate"  # the mark on outputs sent again from the outbox

MessageHandler = Callable[[mqtt.MQTTMessage], None]


class PublishError(RuntimeError):
    pass


class Topics:
    def __init__(self, prefix: str, device_id: str, groups: tuple[str, ...] = ()) -> None:
        self.prefix = prefix
        self.root = f"{prefix}/{device_id}"
        # the roots of the groups' request topics (`[fleet] groups`): the same requests,
        # addressed to every box of a group; each box answers on its own response topics
        self.group_roots = tuple(f"{prefix}/groups/{group}" for group in groups)
        self.all_groups = f"{prefix}/groups/#"  # never a reply topic
        self.status_costs = f"{self.root}/status/costs"  # retained, when a cost moved

    @property
    def availability(self) -> str:
        return f"{self.root}/availability"

    @property
    def status(self) -> str:
        return f"{self.root}/status"

    def output(self, model_id: str) -> str:
        return f"{self.root}/models/{model_id}/output"

    @property
    def config_set(self) -> str:
        return f"{self.root}/config/set"

    @property
    def config_response(self) -> str:
        return f"{self.root}/config/response"

    @property
    def config_state(self) -> str:
        return f"{self.root}/config/state"

    def command(self, name: str) -> str:
        return f"{self.root}/cmd/{name}"

    def command_response(self, name: str) -> str:
        return f"{self.root}/cmd/{name}/response"


# One encoder for every payload: json.dumps with options builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def dumps(payload: Any) -> bytes:
    return _ENCODER.encode(payload).encode("utf-8")


def mark_possible_duplicate(payload: bytes) -> bytes:
    """The payload with `"possible_duplicate": true` when it is a JSON object (outputs are);
    anything else is sent again unchanged."""
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        return payload
    if not isinstance(data, dict):
        return payload
    data[POSSIBLE_DUPLICATE] = True
    return dumps(data)


def _encode(payload: Any) -> bytes:
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


class Publisher:
    def __init__(self, config: MqttConfig, device_id: str, outbox: Outbox | None = None,
                 groups: tuple[str, ...] = ()) -> None:
        self.config = config
        self.topics = Topics(config.prefix, device_id, groups)
        self.outbox = outbox
        self.v5 = config.protocol == "5"
        self._client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=config.client_id or f"mlink-agent-{device_id}",
            protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311,
        )
        self._client.will_set(self.topics.availability, "offline", qos=1, retain=True)
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message
        self._connected = threading.Event()
        self._connack = threading.Event()  # the broker answered the first CONNECT
        self._refused: str | None = None
        self._last_disconnect: str | None = None
        self._pending: list[mqtt.MQTTMessageInfo] = []
        self._handlers: dict[str, MessageHandler] = {}
        self._retained: dict[str, bytes] = {}
        self._retained_lock = threading.Lock()
        self._acked_mids: deque[int] = deque()
        self._taken_back: deque[list[mqtt.MQTTMessage]] = deque()  # from paho, per reconnect
        self._staged: deque[tuple[str, bytes, int]] = deque()
        self._inflight: dict[int, int] = {}  # paho mid -> outbox row id (sender thread only)
        self._row_topics: dict[int, str] = {}  # outbox row id in flight -> its topic
        self._cursor = 0  # highest outbox row id handed to paho in this process
        self._wake = threading.Event()
        self._resend_retained = False
        self._closing = False
        self._sender: threading.Thread | None = None
        self.published = 0
        self.connects = 0
        # PUBACKs with a failure reason code (>= 0x80): not deliveries
        self._refused_mids: deque[tuple[int, int, str]] = deque()  # mid, code, name
        self._direct: dict[int, str] = {}  # paho mid -> topic of responses and retained
        self._resent: set[int] = set()  # mids of responses already sent again once
        self._refused_rows: set[int] = set()  # outbox rows refused, waiting for a retry
        self._retry_at: float | None = None
        self._retry_delay = REFUSED_RETRY_S[0]
        self.refused: dict[str, int] = {}  # "<code> <name>" -> count
        self._refused_topics: dict[str, int] = {}
        self._last_refusal: float | None = None
        self.responses_dropped = 0
        self.disk_full = False  # the outbox cannot be written (state dir's disk full)
        self.unstored = 0  # outputs dropped because they could not be stored
        self._unapplied_acks: list[int] = []  # acknowledged rows whose delete failed
        self._storing = 0  # outputs taken from `_staged` by the sender, not yet in the outbox
        self.frames_skipped: dict[str, int] = {}  # by reason: outbox_full, disk_full
        self._holding: str | None = None  # why the loop skips frames now

    # -- paho callbacks: record and signal only ---------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        if reason_code.is_failure:
            log.error("broker refused the connection: %s", reason_code)
            self._refused = str(reason_code)
            self._connack.set()
            return
        log.info("connected to %s:%s", self.config.host, self.config.port)
        if self.outbox is not None:  # before paho resends them unmarked; see _after_reconnect
            self._taken_back.append(client.drop_out_messages())
        client.publish(self.topics.availability, "online", qos=1, retain=True)
        for topic in self._handlers:
            client.subscribe(topic, qos=1)
        self.connects += 1
        self._resend_retained = True
        self._connected.set()
        self._connack.set()
        self._wake.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        self._connected.clear()
        self._last_disconnect = str(reason_code)
        if not self._closing:
            log.warning("disconnected from the broker: %s", reason_code)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any,
                    properties: Any) -> None:
        if getattr(reason_code, "is_failure", False):  # e.g. 135 Not authorized (an ACL)
            self._refused_mids.append((mid, int(reason_code.value), str(reason_code)))
            self._wake.set()
            return
        self._acked_mids.append(mid)
        if len(self._acked_mids) >= WAKE_ACKS:  # else applied at the next wake-up
            self._wake.set()

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
            self._client.subscribe(topic_filter, qos=1)

    def _secure(self) -> None:
        secure(self._client, self.config)

    def connect(self, timeout_s: float = 10.0) -> None:
        """Connect, retrying an unreachable broker until `timeout_s`; a refused login or a
        failed TLS handshake fails at once with a message that says which. Later outages are
        paho's to reconnect."""
        self._secure()
        where = f"{self.config.host}:{self.config.port}"
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._client.connect(self.config.host, self.config.port,
                                     self.config.keepalive_s)
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
        self._client.loop_start()
        if self.outbox is not None and self._sender is None:
            self._sender = threading.Thread(target=self._send_loop, name="mlink-outbox",
                                            daemon=True)
            self._sender.start()
        self._connack.wait(max(0.0, deadline - time.monotonic()) + 1.0)
        if self._refused is not None:
            login = f"user {self.config.username!r}" if self.config.username else "anonymous"
            raise PublishError(f"the MQTT broker at {where} refused the connection "
                               f"({login}): {self._refused} (check [mqtt] username and "
                               f"password)")
        if not self._connected.is_set():
            why = f": {self._last_disconnect}" if self._last_disconnect else ""
            raise PublishError(f"no connection to the MQTT broker at {where} within "
                               f"{timeout_s:.0f}s{why}")

    # -- publishing ------------------------------------------------------------------------------
    def publish(self, topic: str, payload: Any, qos: int | None = None,
                retain: bool = False) -> None:
        """Outputs (not retained) go through the durable outbox when there is one; retained
        topics keep their latest value and are republished after each connect."""
        data = _encode(payload)
        qos = self.config.qos if qos is None else qos
        if not retain and self.outbox is not None:
            self._staged.append((topic, data, qos))
            self.published += 1
            self._wake.set()
            while len(self._staged) > STAGED_MAX and self._sender is not None \
                    and self._sender.is_alive() and not self._closing:
                if self.disk_full:  # waiting would stall the loop for good: drop, counted
                    self._drop_unstored(len(self._staged) - STAGED_MAX)
                    break
                time.sleep(0.001)  # back-pressure: the disk is slower than the loop
            return
        if retain:
            with self._retained_lock:
                self._retained[topic] = data
            if not self.connected:
                return  # sent after the next connect, latest value only
        self._send_direct(topic, data, qos, retain)

    def respond(self, topic: str, payload: Any, correlation_data: bytes | None = None) -> None:
        """A response (not retained, QoS 1), echoing the request's MQTT v5 CorrelationData."""
        properties = None
        if self.v5 and correlation_data is not None:
            properties = Properties(PacketTypes.PUBLISH)
            properties.CorrelationData = correlation_data
        info = self._client.publish(topic, _encode(payload), qos=1, properties=properties)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            self._count_refused(topic, info.rc, mqtt.error_string(info.rc), response=True)
            return
        self._track_direct(info.mid, topic)

    def _track_direct(self, mid: int, topic: str) -> None:
        self._direct[mid] = topic
        while len(self._direct) > 10 * WINDOW:  # acknowledged long ago, or never will be
            self._direct.pop(next(iter(self._direct)))

    def _count_refused(self, topic: str, code: int, name: str, response: bool = False
                       ) -> None:
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

    def health(self) -> dict[str, Any]:
        """`degraded` while outputs wait refused or a refusal came in the last minute."""
        recent = self._last_refusal is not None and \
            time.monotonic() - self._last_refusal < DEGRADED_FOR_S
        problems = []
        if recent or self._refused_rows:
            problems.append("the broker refuses publications (see refused)")
        if self.disk_full:
            problems.append("disk_full: the outbox cannot be written; the loop skips frames")
        elif self._holding == "outbox_full":
            problems.append("outbox_full: outputs wait for the broker; the loop skips frames")
        return {"state": "degraded" if problems else "ok", "problems": problems,
                "connected": self.connected, "refused": dict(self.refused),
                "refused_waiting": len(self._refused_rows),
                "responses_dropped": self.responses_dropped,
                "disk_full": self.disk_full, "unstored": self.unstored,
                "frames_skipped": dict(self.frames_skipped)}

    def hold_frame(self) -> bool:
        """Back-pressure, asked by the loop before each frame: True (counted by reason) while
        the frame's outputs could not be kept, so that the loop skips it rather than make
        outputs the outbox would drop: the disk is full (`disk_full`), or the outbox holds
        HOLD_AT of its cap (`outbox_full`: the broker is away or slower than the loop)."""
        reason = None
        if self.outbox is not None:
            if self.disk_full:
                reason = "disk_full"
            elif self.pending >= HOLD_AT * self.outbox.max_messages:
                reason = "outbox_full"
        if reason != self._holding:
            if reason is None:
                log.warning("back-pressure over: frames are processed again (%d skipped so "
                            "far)", sum(self.frames_skipped.values()))
            else:
                log.warning("back-pressure (%s, %d outputs waiting): the loop skips frames, "
                            "counted in status.delivery.frames_skipped", reason, self.pending)
            self._holding = reason
        if reason is None:
            return False
        self.frames_skipped[reason] = self.frames_skipped.get(reason, 0) + 1
        return True

    def _send_direct(self, topic: str, data: bytes, qos: int, retain: bool) -> None:
        info = self._client.publish(topic, data, qos=qos, retain=retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise PublishError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        self.published += 1
        if qos:
            self._track_direct(info.mid, topic)
        if self.outbox is not None:
            return  # pending is the outbox's; paho's copies may be taken back at a reconnect
        self._pending.append(info)
        if len(self._pending) > 1000:
            self._pending = [i for i in self._pending if not i.is_published()]

    # -- the sender thread -------------------------------------------------------------------
    def _drop_unstored(self, count: int) -> None:
        """Drop the oldest `count` outputs waiting in memory for a disk that is full."""
        dropped = 0
        for _ in range(count):
            try:
                self._staged.popleft()
            except IndexError:
                break
            dropped += 1
        if dropped and self.unstored == 0:
            log.error("outputs beyond %d waiting for the full disk are dropped (counted in "
                      "status.delivery.unstored)", STAGED_MAX)
        self.unstored += dropped

    def _storage_failed(self, exc: BaseException) -> bool:
        """True (logged once) when `exc` says the outbox's disk is full."""
        full = (isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower()) \
            or (isinstance(exc, OSError) and exc.errno == errno.ENOSPC)
        if full and not self.disk_full:
            log.error("the outbox cannot be written (%s): outputs wait in memory (up to %d, "
                      "then dropped and counted); status.delivery says disk_full", exc,
                      STAGED_MAX)
        self.disk_full = self.disk_full or full
        return full

    def _send_loop(self) -> None:
        assert self.outbox is not None
        woke = 0.0
        while not self._closing:
            self._wake.wait(0.5)
            pause = woke + WAKE_EVERY_S - time.monotonic()
            if pause > 0:  # let outputs and PUBACKs gather: one transaction for them all
                time.sleep(pause)
            self._wake.clear()
            woke = time.monotonic()
            try:
                self._store_staged()
                if not self.connected:
                    continue
                self._after_reconnect()
                self._retry_refused()
                if self._resend_retained:
                    self._resend_retained = False
                    with self._retained_lock:
                        retained = list(self._retained.items())
                    for topic, data in retained:
                        self._send_direct(topic, data, 1, True)
                self._send_more()
            except Exception as exc:
                if not self._storage_failed(exc):
                    log.exception("outbox sender: retrying")
                time.sleep(0.5)
        try:
            self._store_staged()
        except Exception as exc:
            self._storage_failed(exc)
            lost = len(self._staged)
            self._drop_unstored(lost)
            log.error("%d outputs could not be stored at the stop (%s): lost, counted", lost,
                      exc)

    def _store_staged(self) -> None:
        """One transaction per wake-up: what is staged is stored and what was acknowledged is
        deleted. Where nothing older waits to be sent and the window has room, the new rows
        are stored as sent and handed to MQTT from memory (a frame's outputs cost one write,
        not an insert, a read, a mark and a delete)."""
        assert self.outbox is not None
        batch = []
        while self._staged:  # counted in `pending` all along (see `_storing`)
            batch.append(self._staged.popleft())
            self._storing += 1
        acked = self._unapplied_acks + self._take_acked()
        self._unapplied_acks = []
        self._take_refused()
        direct = (bool(batch) and self.connected and not self._closing and not self._taken_back
                  and self._cursor >= self.outbox.last_id
                  and len(self._inflight) + len(batch) <= WINDOW)
        try:
            ids = self.outbox.store(batch, sent=direct, acked=acked)
        except BaseException:
            self._staged.extendleft(reversed(batch))  # keep them, in order, for the retry
            self._storing = 0
            self._unapplied_acks = acked
            raise
        finally:
            self._storing = 0
        if self.disk_full and (batch or acked):
            self.disk_full = False
            log.warning("the outbox is written again (disk no longer full)")
        if direct:
            self._hand_over([Message(i, topic, data, qos, False)
                             for i, (topic, data, qos) in zip(ids, batch, strict=True)])

    def _take_acked(self) -> list[int]:
        """The outbox rows of the PUBACKs received since the last wake-up."""
        rows = []
        while self._acked_mids:
            mid = self._acked_mids.popleft()
            row = self._inflight.pop(mid, None)
            if row is not None:
                rows.append(row)
                self._row_topics.pop(row, None)
            else:
                self._direct.pop(mid, None)
        if rows:
            self._retry_delay = REFUSED_RETRY_S[0]  # the broker takes outputs again
        return rows

    def _apply_acks(self) -> None:
        assert self.outbox is not None
        self.outbox.ack(self._take_acked())
        self._take_refused()

    def _take_refused(self) -> None:
        """PUBACKs with a failure reason code: an output's row stays in the outbox, unmarked
        (it was not delivered), to be sent again after a back-off; a response or a retained
        message is counted and dropped."""
        refused_rows = []
        while self._refused_mids:
            mid, code, name = self._refused_mids.popleft()
            row = self._inflight.pop(mid, None)
            if row is not None:
                refused_rows.append(row)
                self._count_refused(self._row_topics.pop(row, "?"), code, name)
            else:
                self._count_refused(self._direct.pop(mid, "?"), code, name, response=True)
        if refused_rows:
            assert self.outbox is not None
            self.outbox.mark_sent(refused_rows, sent=False)
            self._refused_rows.update(refused_rows)
            if self._retry_at is None:
                self._retry_at = time.monotonic() + self._retry_delay
                self._retry_delay = min(self._retry_delay * 2, REFUSED_RETRY_S[1])

    def _retry_refused(self) -> None:
        """When the back-off is over, send the refused rows again (from the outbox, in order)."""
        if self._retry_at is None or time.monotonic() < self._retry_at:
            return
        assert self.outbox is not None
        self._retry_at = None
        if self._refused_rows:
            self._cursor = min(self._cursor, min(self._refused_rows) - 1)
            self._refused_rows.clear()

    def _after_reconnect(self) -> None:
        """Forget what was in flight before the reconnect (paho no longer holds it): the rows
        are read again from the outbox, marked, by _send_more. Responses taken back with them
        are published again as they were; retained messages are resent from `_retained`."""
        while self._taken_back:
            taken = self._taken_back.popleft()
            self._apply_acks()  # PUBACKs that arrived before the connection dropped
            outbox_mids, rows = set(self._inflight), list(self._inflight.values())
            self._inflight.clear()
            self._row_topics.clear()
            if self._refused_rows:  # a reconnect is a retry for refused outputs too
                self._cursor = min(self._cursor, min(self._refused_rows) - 1)
                self._refused_rows.clear()
                self._retry_at = None
            if rows:
                self._cursor = min(self._cursor, min(rows) - 1)
                log.info("%d outputs in flight at the disconnect: sent again, marked %s",
                         len(rows), POSSIBLE_DUPLICATE)
            for message in taken:
                if message.retain or message.mid in outbox_mids:
                    continue
                topic = message.topic
                if message.mid in self._resent:  # in flight at two disconnects: let it go
                    self._resent.discard(message.mid)
                    self._count_refused(topic, -1, "dropped twice by the broker",
                                        response=True)
                    continue
                info = self._client.publish(topic, message.payload, qos=message.qos,
                                            properties=message.properties)
                self._resent.add(info.mid)
                while len(self._resent) > 10 * WINDOW:
                    self._resent.pop()

    def _send_more(self) -> None:
        """Hand the next outbox rows to paho, up to WINDOW in flight; rows sent before (by this
        process before a reconnect, or by an earlier one) go out marked."""
        assert self.outbox is not None
        room = WINDOW - len(self._inflight)
        if room <= 0 or self._cursor >= self.outbox.last_id:
            return
        busy = set(self._inflight.values())
        batch = [m for m in self.outbox.after(self._cursor, room) if m.id not in busy]
        self.outbox.mark_sent([m.id for m in batch if not m.sent])
        self._hand_over(batch)
        if len(self._acked_mids) >= WAKE_ACKS:
            self._wake.set()

    def _hand_over(self, batch: list[Message]) -> None:
        for message in batch:
            payload = mark_possible_duplicate(message.payload) if message.sent \
                else message.payload
            info = self._client.publish(message.topic, payload, qos=message.qos)
            if info.rc == mqtt.MQTT_ERR_NO_CONN and message.qos == 0:
                return  # paho keeps QoS 1 for the reconnect, not QoS 0: retry from disk
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                log.error("publish to %s failed: %s; retrying", message.topic,
                          mqtt.error_string(info.rc))
                return
            self._inflight[info.mid] = message.id
            self._row_topics[message.id] = message.topic
            self._cursor = max(self._cursor, message.id)

    # -- state and shutdown --------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Messages not yet acknowledged: the outbox depth, or paho's own queue."""
        if self.outbox is not None:
            return self.outbox.depth + len(self._staged) + self._storing
        self._pending = [i for i in self._pending if not i.is_published()]
        return len(self._pending)

    def drain(self, timeout_s: float = 30.0) -> bool:
        """Wait until every output is acknowledged; False if time ran out (with an outbox,
        what is left stays on disk and is replayed at the next start)."""
        deadline = time.monotonic() + timeout_s
        while self.pending:
            if time.monotonic() > deadline:
                if self.outbox is None:
                    log.error("%d messages still unacknowledged after %.0fs", self.pending,
                              timeout_s)
                else:
                    log.error("%d messages still unacknowledged after %.0fs: %d kept in the "
                              "outbox for the next start, %d not stored%s", self.pending,
                              timeout_s, self.outbox.depth, len(self._staged),
                              " (disk full: lost at the stop)" if self.disk_full else "")
                return False
            self._wake.set()
            time.sleep(0.01)
        return True

    def close(self, timeout_s: float = 30.0) -> bool:
        """Clean exit: drain (`timeout_s` 0: not again), publish `stopped`, disconnect (so the
        LWT is not sent)."""
        drained = self.drain(timeout_s) if timeout_s > 0 else not self.pending
        if self.connected:
            info = self._client.publish(self.topics.availability, "stopped", qos=1, retain=True)
            info.wait_for_publish(timeout=5.0)
        self._closing = True
        self._wake.set()
        if self._sender is not None:
            self._sender.join(5.0)
        elif self.outbox is not None:
            self._store_staged()  # never connected: keep what was published for next time
        self._client.disconnect()
        self._client.loop_stop()
        if self.outbox is not None:
            self.outbox.close()
        return drained
