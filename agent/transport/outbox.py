"""The durable outbox: every output is written to SQLite before it is published and deleted
only when the broker acknowledges it (PUBACK), so outputs survive broker outages and agent
restarts. paho-mqtt keeps QoS 1 messages in memory only; durability is ours.

Bounded: beyond `max_messages` the oldest rows are dropped (drop-oldest: a subscriber cares
more about the present than a backlog) and every drop is counted, persistently, for the status.
One connection guarded by a lock: the loop thread writes, the sender thread reads and deletes.

A row carries its message's `key` where it has one: a frame message's `seq`. The highest key
ever stored is kept (`next_key`), so that a restarted agent numbers its frame messages on
from there and a replayed copy never shares its `seq` with a new message.

Each row remembers whether it was ever handed to MQTT (`sent`, committed before the hand-over):
a row sent before and still here may have reached the broker with its PUBACK lost, so its
next copy is published marked as a possible duplicate (agent/transport/sender.py).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

WAL_LIMIT_BYTES = 4 * 1024 * 1024

Staged = tuple[str, bytes, int, "int | None"]  # topic, payload, qos, key

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    created REAL NOT NULL,
    sent INTEGER NOT NULL DEFAULT 0,
    key INTEGER
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class OutboxError(RuntimeError):
    """The outbox file cannot be opened (not a database, unreadable, its folder a file)."""


@dataclass(frozen=True)
class Message:
    id: int
    topic: str
    payload: bytes
    qos: int
    sent: bool = False  # handed to MQTT before: may already have been delivered


class Outbox:
    """A bounded FIFO of messages on disk; `put` before publishing, `ack` on PUBACK."""

    def __init__(self, path: Path, max_messages: int = 100_000,
                 synchronous: str = "normal") -> None:
        self.path = Path(path)
        self.max_messages = max_messages
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False,
                                       isolation_level=None)
            self._open(synchronous)
        except (sqlite3.Error, OSError) as exc:
            raise OutboxError(f"{self.path}: the outbox cannot be opened: {exc} (a damaged "
                              f"file can be moved aside; the agent then starts with an empty "
                              f"outbox and the outputs in it are not sent)") from None
        self.acked = 0
        self.recovered = self._depth  # left by an earlier process: replayed after connecting
        if self._depth:
            log.info("outbox %s: %d messages from an earlier run will be replayed",
                     self.path, self._depth)

    def _open(self, synchronous: str) -> None:
        self._db.execute("PRAGMA journal_mode=WAL")
        # the WAL is truncated back to this after each checkpoint, so it cannot fill the disk
        self._db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
        self._db.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
        self._db.executescript(SCHEMA)
        self._migrate()
        self._depth = int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
        self.last_id = int(self._db.execute("SELECT COALESCE(MAX(id), 0) FROM outbox")
                           .fetchone()[0])  # the newest row's id
        self.dropped = self._counter("dropped")
        self.next_key = max(self._counter("key"), int(self._db.execute(
            "SELECT COALESCE(MAX(key), 0) FROM outbox").fetchone()[0])) + 1

    def _migrate(self) -> None:
        """Outboxes written before `sent` existed: their rows may have been sent, so they
        count as sent (marked when replayed) rather than risk an unmarked duplicate."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
        if "sent" not in columns:
            self._db.execute("ALTER TABLE outbox ADD COLUMN sent INTEGER NOT NULL DEFAULT 0")
            self._db.execute("UPDATE outbox SET sent = 1")
        if "key" not in columns:
            self._db.execute("ALTER TABLE outbox ADD COLUMN key INTEGER")

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    @property
    def depth(self) -> int:
        return self._depth

    def put(self, topic: str, payload: bytes, qos: int = 1) -> int:
        """Store one message (committed before returning); return its id."""
        return self.put_many([(topic, payload, qos)])[-1]

    def put_many(self, messages: list[tuple[str, bytes, int]]) -> list[int]:
        """Store messages in one transaction, then drop the oldest beyond the bound."""
        return self.store([(topic, payload, qos, None) for topic, payload, qos in messages])

    def store(self, messages: Sequence[Staged], sent: bool = False,
              acked: list[int] | None = None, unsent: list[int] | None = None) -> list[int]:
        """Delete acknowledged rows, mark refused ones not sent (`unsent`: no copy of them was
        delivered) and store new messages in one transaction (the sender's one write per
        wake-up; `sent`: they are handed to MQTT right after the commit), then drop the oldest
        beyond the bound. Returns the new rows' ids."""
        if not messages and not acked and not unsent:
            return []
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                removed = self._db.executemany(
                    "DELETE FROM outbox WHERE id = ?", [(i,) for i in acked]
                ).rowcount if acked else 0
                if unsent:
                    self._db.executemany("UPDATE outbox SET sent = 0 WHERE id = ?",
                                         [(i,) for i in unsent])
                ids = [int(self._db.execute(
                    "INSERT INTO outbox (topic, payload, qos, created, sent, key) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (topic, payload, qos, now, int(sent), key)).lastrowid or 0)
                    for topic, payload, qos, key in messages]
                keys = [key for *_, key in messages if key is not None]
                if keys:
                    self._db.execute(
                        "INSERT INTO counters (name, value) VALUES ('key', ?) "
                        "ON CONFLICT(name) DO UPDATE SET value = max(value, excluded.value)",
                        (max(keys),))
                excess = self._depth - removed + len(messages) - self.max_messages
                deleted = 0
                if excess > 0:
                    deleted = self._db.execute(
                        "DELETE FROM outbox WHERE id IN "
                        "(SELECT id FROM outbox ORDER BY id LIMIT ?)", (excess,)
                    ).rowcount
                    self._db.execute(
                        "INSERT INTO counters (name, value) VALUES ('dropped', ?) "
                        "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                        (deleted,),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            self._depth += len(messages) - deleted - removed
            self.acked += removed
            self.last_id = max([self.last_id, *ids])
            if keys:
                self.next_key = max(self.next_key, max(keys) + 1)
            if deleted:
                if self.dropped == 0:
                    log.warning("outbox full (%d messages): dropping the oldest", self.max_messages)
                self.dropped += deleted
            return ids

    def after(self, last_id: int, limit: int) -> list[Message]:
        """Up to `limit` messages with an id above `last_id`, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, qos, sent FROM outbox WHERE id > ? "
                "ORDER BY id LIMIT ?", (last_id, limit),
            ).fetchall()
        return [Message(int(r[0]), str(r[1]), bytes(r[2]), int(r[3]), bool(r[4])) for r in rows]

    def mark_sent(self, ids: list[int], sent: bool = True) -> None:
        """Record that these rows are being handed to MQTT; committed before the hand-over,
        so that a crash right after it still replays them marked. `sent=False`: the broker
        refused them (a PUBACK with a failure reason code), so no copy was delivered."""
        if not ids:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("UPDATE outbox SET sent = ? WHERE id = ?",
                                     [(int(sent), i) for i in ids])
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        """Roll back what is open; SQLite has already rolled back after some errors (a full
        disk: SQLITE_FULL), and a second ROLLBACK would hide the first error."""
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def ack(self, ids: list[int]) -> int:
        """Delete acknowledged messages; ids already dropped are ignored."""
        acked = self.acked
        self.store([], acked=ids)
        return self.acked - acked

    def stats(self) -> dict[str, int]:
        return {"depth": self._depth, "max_messages": self.max_messages,
                "dropped": self.dropped, "acked": self.acked, "recovered": self.recovered}

    def close(self) -> None:
        with self._lock:
            self._db.close()
