"""The outbox sender: outputs go through the durable outbox (agent/transport/outbox.py).

`stage()` only queues them in memory; the sender thread writes what is staged to SQLite in one
transaction (the loop never waits for the disk), then publishes from SQLite with a bounded
window of messages in flight; a message is deleted on its PUBACK. Nothing is handed to paho
while the connection is down, so what accumulates during a broker outage waits on disk and
memory stays bounded. Back-pressure: `hold_frame()` tells the loop to skip frames while the
outbox is nearly full or its disk is.

After a reconnect the messages that were in flight are taken back from paho (which would
resend them unchanged) and published again from the outbox marked `"possible_duplicate":
true`: each may have reached the broker with its PUBACK lost. Rows handed to MQTT by an
earlier process are marked the same way when replayed; rows never sent are not. So a
subscriber sees every output at least once, and every extra copy carries the mark. A PUBACK
with a failure reason code is not a delivery: the row stays and is sent again after a
back-off, unmarked where the refused copy was its first (a refused resend stays marked: an
earlier copy may have reached the broker with its PUBACK lost).
"""

from __future__ import annotations

import errno
import json
import logging
import sqlite3
import threading
import time
from collections import deque

import paho.mqtt.client as mqtt

from agent.transport.mqtt import WAKE_ACKS, WINDOW, MqttClient, dumps
from agent.transport.outbox import Message, Outbox, Staged

log = logging.getLogger(__name__)

WAKE_EVERY_S = 0.005  # the sender wakes at most this often: each wake-up is 1-3 SQLite
# transactions, so at full rate it stores and sends hundreds of rows per wake-up, not a few
REFUSED_RETRY_S = (5.0, 60.0)  # refused outputs are sent again after this, doubling to max
STAGED_MAX = 10_000  # outputs accepted but not yet on disk; beyond it stage() waits
HOLD_AT = 0.9  # the loop skips frames while the outbox holds this share of its cap
POSSIBLE_DUPLICATE = "possible_duplicate"  # the mark on outputs sent again from the outbox


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


class OutboxSender:
    """Stages outputs, stores them in `outbox` and sends them through `mqtt`, on its own
    thread (`start`)."""

    def __init__(self, mqtt_client: MqttClient, outbox: Outbox,
                 gather_s: float = WAKE_EVERY_S) -> None:
        """`gather_s`: the sender wakes at most this often, so what comes in between goes in
        one transaction and one burst to paho (longer: less CPU per message, later delivery,
        and more made but not yet stored at a crash)."""
        self.mqtt = mqtt_client
        self.outbox = outbox
        self.gather_s = gather_s
        self.wake = threading.Event()
        self._staged: deque[Staged] = deque()
        self._inflight: dict[int, int] = {}  # paho mid -> outbox row id (sender thread only)
        self._row_topics: dict[int, str] = {}  # outbox row id in flight -> its topic
        self._first_copies: set[int] = set()  # rows in flight whose copy is their first
        self._cursor = 0  # highest outbox row id handed to paho in this process
        self._closing = False
        self._thread: threading.Thread | None = None
        self.staged_total = 0  # outputs staged by this process
        self._refused_rows: set[int] = set()  # outbox rows refused, waiting for a retry
        self._retry_at: float | None = None
        self._retry_delay = REFUSED_RETRY_S[0]
        self.disk_full = False  # the outbox cannot be written (state dir's disk full)
        self.unstored = 0  # outputs dropped because they could not be stored
        # taken from paho's PUBACKs, applied to the outbox in the next write (kept for the one
        # after where that write fails: a full disk never makes the sender forget a row)
        self._acked_rows: list[int] = []  # acknowledged: to delete
        self._unsent_rows: list[int] = []  # refused: to mark not sent (no copy delivered)
        self._storing = 0  # outputs taken from `_staged` by the sender, not yet in the outbox
        self.frames_skipped: dict[str, int] = {}  # by reason: outbox_full, disk_full
        self._holding: str | None = None  # why the loop skips frames now

    # -- the loop's side -----------------------------------------------------------------------
    def stage(self, topic: str, data: bytes, qos: int, key: int | None = None) -> None:
        """Queue one output (`key`: a frame message's `seq`); the sender thread stores and
        sends it. Beyond STAGED_MAX waiting for the disk, wait (the disk is slower than the
        loop), or drop, counted, when the disk is full."""
        self._staged.append((topic, data, qos, key))
        self.staged_total += 1
        self.wake.set()
        while len(self._staged) > STAGED_MAX and self.running and not self._closing:
            if self.disk_full:  # waiting would stall the loop for good: drop, counted
                self._drop_unstored(len(self._staged) - STAGED_MAX)
                break
            time.sleep(0.001)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def pending(self) -> int:
        """Messages not yet acknowledged: the outbox depth and what waits to be stored."""
        return self.outbox.depth + len(self._staged) + self._storing

    def hold_frame(self) -> bool:
        """Back-pressure, asked by the loop before each frame: True (counted by reason) while
        the frame's outputs could not be kept, so that the loop skips it rather than make
        outputs the outbox would drop: the disk is full (`disk_full`), or the outbox holds
        HOLD_AT of its cap (`outbox_full`: the broker is away or slower than the loop)."""
        reason = None
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

    def problems(self) -> list[str]:
        """What the delivery health says of the outbox."""
        problems = []
        if self._refused_rows:
            problems.append("the broker refuses publications (see refused)")
        if self.disk_full:
            problems.append("disk_full: the outbox cannot be written; the loop skips frames")
        elif self._holding == "outbox_full":
            problems.append("outbox_full: outputs wait for the broker; the loop skips frames")
        return problems

    @property
    def refused_waiting(self) -> int:
        return len(self._refused_rows)

    @property
    def staged(self) -> int:
        return len(self._staged)

    # -- the thread ----------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._send_loop, name="mlink-outbox",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread (what is staged is stored first); never started: store it now,
        for the next start."""
        self._closing = True
        self.wake.set()
        if self._thread is not None:
            self._thread.join(5.0)
        else:
            self._store_staged()

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
        woke = 0.0
        while not self._closing:
            self.wake.wait(0.5)
            pause = woke + self.gather_s - time.monotonic()
            if pause > 0:  # let outputs and PUBACKs gather: one transaction for them all
                time.sleep(pause)
            self.wake.clear()
            woke = time.monotonic()
            try:
                self._store_staged()
                if not self.mqtt.connected:
                    continue
                self._after_reconnect()
                self._retry_refused()
                self.mqtt.resend_retained()
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
        self._take_answers()
        batch = []
        while self._staged:  # counted in `pending` all along (see `_storing`)
            batch.append(self._staged.popleft())
            self._storing += 1
        acked, unsent = self._acked_rows, self._unsent_rows
        direct = (bool(batch) and self.mqtt.connected and not self._closing
                  and not self.mqtt.taken_back and self._cursor >= self.outbox.last_id
                  and len(self._inflight) + len(batch) <= WINDOW)
        try:
            ids = self.outbox.store(batch, sent=direct, acked=acked, unsent=unsent)
        except BaseException:
            self._staged.extendleft(reversed(batch))  # keep them, in order, for the retry
            raise  # the answers stay in _acked_rows and _unsent_rows for the next write
        finally:
            self._storing = 0
        self._acked_rows, self._unsent_rows = [], []
        if self.disk_full and (batch or acked or unsent):
            self.disk_full = False
            log.warning("the outbox is written again (disk no longer full)")
        if direct:
            self._hand_over([Message(i, topic, data, qos, False)
                             for i, (topic, data, qos, _) in zip(ids, batch, strict=True)])

    def _take_answers(self) -> None:
        """The broker's answers since the last wake-up, in memory only (never fails): rows
        acknowledged go to `_acked_rows`, rows refused to `_refused_rows` and `_unsent_rows`;
        the next write of the outbox applies them."""
        self._take_acked()
        self._take_refused()

    def _take_acked(self) -> None:
        """The outbox rows of the PUBACKs received since the last wake-up."""
        rows = []
        acked = self.mqtt.acked_mids
        while acked:
            mid = acked.popleft()
            row = self._inflight.pop(mid, None)
            if row is not None:
                rows.append(row)
                self._row_topics.pop(row, None)
                self._first_copies.discard(row)
            else:
                self.mqtt.settle_direct(mid)
        if rows:
            self._acked_rows.extend(rows)
            self._retry_delay = REFUSED_RETRY_S[0]  # the broker takes outputs again

    def _take_refused(self) -> None:
        """PUBACKs with a failure reason code: an output's row stays in the outbox, to be
        sent again after a back-off, and marked not sent where the refused copy was its first
        (no copy was delivered); a response or a retained message is counted and dropped."""
        refused_rows = []
        refusals = self.mqtt.refused_mids
        while refusals:
            mid, code, name = refusals.popleft()
            row = self._inflight.pop(mid, None)
            if row is not None:
                refused_rows.append(row)
                self.mqtt.count_refused(self._row_topics.pop(row, "?"), code, name)
                if row in self._first_copies:  # its only copy was refused: not sent
                    self._first_copies.discard(row)
                    self._unsent_rows.append(row)
                # (a refused resend stays marked: an earlier copy may have been delivered)
            else:
                self.mqtt.refused_direct(mid, code, name)
        if refused_rows:
            self._refused_rows.update(refused_rows)
            if self._retry_at is None:
                self._retry_at = time.monotonic() + self._retry_delay
                self._retry_delay = min(self._retry_delay * 2, REFUSED_RETRY_S[1])

    def _retry_refused(self) -> None:
        """When the back-off is over, send the refused rows again (from the outbox, in order)."""
        if self._retry_at is None or time.monotonic() < self._retry_at:
            return
        self._retry_at = None
        if self._refused_rows:
            self._cursor = min(self._cursor, min(self._refused_rows) - 1)
            self._refused_rows.clear()

    def _after_reconnect(self) -> None:
        """Forget what was in flight before the reconnect (paho no longer holds it): the rows
        are read again from the outbox, marked, by _send_more. Responses taken back with them
        are published again as they were; retained messages are resent by the client."""
        if not self.mqtt.taken_back:
            return
        taken: list[mqtt.MQTTMessage] = []  # of every reconnect since the last wake-up: an
        while self.mqtt.taken_back:  # output's copy taken back at the second is in flight too
            taken += self.mqtt.taken_back.popleft()
        self._take_answers()  # PUBACKs that arrived before the connection dropped
        outbox_mids, rows = set(self._inflight), list(self._inflight.values())
        self._inflight.clear()
        self._row_topics.clear()
        self._first_copies.clear()
        if self._refused_rows:  # a reconnect is a retry for refused outputs too
            self._cursor = min(self._cursor, min(self._refused_rows) - 1)
            self._refused_rows.clear()
            self._retry_at = None
        if rows:
            self._cursor = min(self._cursor, min(rows) - 1)
            log.info("%d outputs in flight at the disconnect: sent again, marked %s",
                     len(rows), POSSIBLE_DUPLICATE)
        self.mqtt.resend_taken_back(taken, outbox_mids)

    def _send_more(self) -> None:
        """Hand the next outbox rows to paho, up to WINDOW in flight; rows sent before (by this
        process before a reconnect, or by an earlier one) go out marked."""
        room = WINDOW - len(self._inflight)
        if room <= 0 or self._cursor >= self.outbox.last_id or self._unsent_rows:
            return  # refusals not yet written: their rows' `sent` on disk is still true
        busy = set(self._inflight.values()).union(self._acked_rows)  # acked, not yet deleted
        batch = [m for m in self.outbox.after(self._cursor, room) if m.id not in busy]
        self.outbox.mark_sent([m.id for m in batch if not m.sent])
        self._hand_over(batch)
        if len(self.mqtt.acked_mids) >= WAKE_ACKS:
            self.wake.set()

    def _hand_over(self, batch: list[Message]) -> None:
        for message in batch:
            payload = mark_possible_duplicate(message.payload) if message.sent \
                else message.payload
            info = self.mqtt.publish(message.topic, payload, message.qos)
            if info.rc == mqtt.MQTT_ERR_NO_CONN and message.qos == 0:
                return  # paho keeps QoS 1 for the reconnect, not QoS 0: retry from disk
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                log.error("publish to %s failed: %s; retrying", message.topic,
                          mqtt.error_string(info.rc))
                return
            self._inflight[info.mid] = message.id
            self._row_topics[message.id] = message.topic
            if message.sent:
                self._first_copies.discard(message.id)
            else:
                self._first_copies.add(message.id)
            self._cursor = max(self._cursor, message.id)

    def drain_log(self, timeout_s: float) -> None:
        log.error("%d messages still unacknowledged after %.0fs: %d kept in the outbox for "
                  "the next start, %d not stored%s", self.pending, timeout_s, self.outbox.depth,
                  len(self._staged), " (disk full: lost at the stop)" if self.disk_full else "")
