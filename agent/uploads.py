"""Uploads of the profiling windows' rows (agent.windowstore) over MQTT, for relinking.

On `cmd/upload` (`Uploader.prepare`, then `start`), or when a window's live agreement has
fallen below the bundle's profile (`DriftWatch`, `[fleet] drift_margin`), the rows file is
sent as one upload (docs/mqtt.md, "Uploads"): the previous upload of this box is cleared
first (zero-length retained messages on its manifest and chunk topics), then, QoS 1, each
waiting for the broker's PUBACK before the next step:

1. the chunks `<root>/uploads/<id>/<n>`, retained, each at most `[fleet] upload_chunk_kb`;
2. the manifest `<root>/uploads/<id>`, retained (agent/schemas/upload.json);
3. the same manifest, not retained, on the job topic `<prefix>/fleet/relink`.

So when a trainer reads the job, the broker holds every chunk. The upload is bounded before
anything is published (`MAX_UPLOAD_BYTES`, `MAX_UPLOAD_CHUNKS`); one upload at a time; a
refused request changes nothing. The id of the last upload is kept in
`<state dir>/windows/uploads.json`, so that the next one clears it, also after a restart.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from agent.errors import RequestError
from agent.files import write_atomically
from agent.limits import MAX_REASON_CHARS, MAX_UPLOAD_BYTES, MAX_UPLOAD_CHUNKS
from agent.transport.topics import UPLOAD_ID, Topics
from agent.windowstore import WindowStore
from links_tflite.tasks import TaskSpec

log = logging.getLogger(__name__)

REQUEST_KEYS = ("reason",)  # what cmd/upload takes, besides the transaction
RECORD_FILE = "uploads.json"
ACK_TIMEOUT_S = 30.0  # for each PUBACK; beyond, the upload fails (counted)
IN_FLIGHT = 8  # chunks handed to MQTT and not yet acknowledged, at most


class Delivery(Protocol):
    """A publication handed to MQTT (paho's MQTTMessageInfo)."""

    def wait_for_publish(self, timeout: float | None = None) -> None: ...

    def is_published(self) -> bool: ...


class UploadLink(Protocol):
    """What the uploader needs of the connection (agent.transport.Publisher)."""

    @property
    def topics(self) -> Topics: ...

    @property
    def connected(self) -> bool: ...

    def send(self, topic: str, data: bytes, retain: bool) -> Delivery: ...


@dataclass(frozen=True)
class UploadContext:
    """What an upload says about the box, read when it is prepared: its groups, the bundle
    in force (`name`, `version`: links_tflite.bundle.identity) and the tasks of the models it
    runs (rows recorded under other tasks are not sent)."""

    groups: tuple[str, ...]
    bundle: dict[str, str]
    tasks: dict[str, TaskSpec]


@dataclass(frozen=True)
class Upload:
    id: str
    data: bytes
    rows: int
    chunk_bytes: int
    manifest: dict[str, Any]

    @property
    def chunks(self) -> int:
        return self.manifest["chunks"]

    def summary(self) -> dict[str, Any]:
        """cmd/upload's result."""
        m = self.manifest
        return {"upload": self.id, "rows": self.rows, "chunks": m["chunks"], "size": m["size"],
                "sha256": m["sha256"]}


def parse_request(body: dict[str, Any]) -> str:
    """The `reason` of a cmd/upload request (default `request`), or RequestError."""
    reason = body.get("reason", "request")
    if not isinstance(reason, str) or not 1 <= len(reason) <= MAX_REASON_CHARS \
            or not reason.isprintable():
        raise RequestError([("reason", f"must be a string of 1-{MAX_REASON_CHARS} printable "
                                       f"characters")])
    return reason


class Uploader:
    """Sends the window store's rows as uploads, one at a time (thread-safe)."""

    def __init__(self, store: WindowStore, link: UploadLink, chunk_bytes: int,
                 context: Callable[[], UploadContext], clock: Callable[[], float] = time.time,
                 ack_timeout_s: float = ACK_TIMEOUT_S,
                 done: Callable[[], None] = lambda: None) -> None:
        self.store = store
        self.link = link
        self.chunk_bytes = chunk_bytes
        self.context = context
        self.clock = clock
        self.ack_timeout_s = ack_timeout_s
        self.done = done  # after each upload started, published or failed (the status)
        self.record_file = store.folder / RECORD_FILE
        self.uploads = 0  # published whole
        self.failed = 0  # started, not published whole (the broker away, no PUBACK)
        self.refused = 0  # asked for and refused (nothing published)
        self.last_error: str | None = None
        self.last: dict[str, Any] | None = None  # id, reason, ts, chunks: the last started
        self._lock = threading.Lock()
        self._busy = False
        self._thread: threading.Thread | None = None
        self._read_record()

    # -- asking --------------------------------------------------------------------------------
    def prepare(self, reason: str) -> Upload:
        """The upload of the rows kept now, or RequestError (nothing published, nothing
        changed): none kept, the broker away, an upload in progress, or beyond the bounds.
        `start` then publishes it."""
        with self._lock:
            if self._busy:
                self.refused += 1
                raise RequestError([("", f"upload {self.last and self.last['id']} is still "
                                         f"being published: ask again when it is done")])
            self._busy = True
        try:
            return self._prepare(reason)
        except BaseException:
            with self._lock:
                self._busy = False
                self.refused += 1
            raise

    def _prepare(self, reason: str) -> Upload:
        if not self.link.connected:
            raise RequestError([("", "not connected to the broker: nothing to upload to")])
        context = self.context()
        snapshot = self.store.snapshot()
        if snapshot is None:
            raise RequestError([("", "no profiling window rows kept yet (a window keeps its "
                                     "rows at its end)")])
        data, rows, tasks = snapshot
        if tasks != context.tasks:
            raise RequestError([("", "the rows kept were recorded under other tasks than the "
                                     "bundle's in force: the next window keeps new ones")])
        chunks = max(1, math.ceil(len(data) / self.chunk_bytes))
        if len(data) > MAX_UPLOAD_BYTES or chunks > MAX_UPLOAD_CHUNKS:
            raise RequestError([("", f"the rows file is {len(data)} bytes in {chunks} chunks, "
                                     f"beyond {MAX_UPLOAD_BYTES} bytes or {MAX_UPLOAD_CHUNKS} "
                                     f"chunks: lower [fleet] window_rows or raise "
                                     f"upload_chunk_kb")])
        ts = self.clock()
        upload_id = f"{int(ts)}-{secrets.token_hex(2)}"
        topics = self.link.topics
        manifest = {"upload": upload_id, "device": topics.device_id,
                    "groups": list(context.groups), "bundle": dict(context.bundle),
                    "rows": rows, "chunks": chunks, "size": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(), "reason": reason,
                    "ts": round(ts, 3)}
        return Upload(upload_id, data, rows, self.chunk_bytes, manifest)

    def start(self, upload: Upload) -> None:
        """Publish a prepared upload on a thread of its own."""
        self._thread = threading.Thread(target=self._publish_safely, args=(upload,),
                                        name="mlink-upload", daemon=True)
        self._thread.start()

    def request(self, reason: str) -> bool:
        """Prepare and publish an upload on a thread of its own (the frame loop's way, for a
        drift: the rows file is read off the loop); False where none can start now (one in
        progress, the broker away). A refusal while preparing is logged and counted."""
        with self._lock:
            if self._busy or not self.link.connected:
                return False
            self._busy = True
        self._thread = threading.Thread(target=self._prepare_and_publish, args=(reason,),
                                        name="mlink-upload", daemon=True)
        self._thread.start()
        return True

    def _prepare_and_publish(self, reason: str) -> None:
        try:
            upload = self._prepare(reason)
        except Exception as exc:
            with self._lock:
                self._busy = False
                self.refused += 1
            log.warning("upload (%s) not started: %s", reason, exc)
            return
        self._publish_safely(upload)

    # -- publishing ----------------------------------------------------------------------------
    def publish(self, upload: Upload) -> None:
        """Clear the previous upload, then the chunks, the manifest, the job, each step after
        the broker acknowledged the one before; RuntimeError where it did not."""
        topics = self.link.topics
        previous = self.last
        if previous is not None:
            self._send_all([(topics.upload(previous["id"]), b"")] + [
                (topics.upload_chunk(previous["id"], n), b"") for n in range(previous["chunks"])])
        self._write_record({"id": upload.id, "reason": upload.manifest["reason"],
                            "ts": upload.manifest["ts"], "chunks": upload.chunks})
        data, size = upload.data, upload.chunk_bytes
        self._send_all((topics.upload_chunk(upload.id, n), data[n * size:(n + 1) * size])
                       for n in range(upload.chunks))
        manifest = json.dumps(upload.manifest, separators=(",", ":")).encode("utf-8")
        self._send_all([(topics.upload(upload.id), manifest)])
        self._send_all([(topics.relink, manifest)], retain=False)
        with self._lock:
            self.uploads += 1
        self._save_record()
        log.info("upload %s (%s): %d rows, %d bytes in %d chunks", upload.id,
                 upload.manifest["reason"], upload.rows, len(data), upload.chunks)

    def _publish_safely(self, upload: Upload) -> None:
        try:
            self.publish(upload)
        except Exception as exc:  # counted and logged; the next upload clears what went out
            with self._lock:
                self.failed += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
            log.error("upload %s failed: %s", upload.id, exc)
        finally:
            with self._lock:
                self._busy = False
        try:
            self.done()
        except Exception:
            log.exception("after upload %s", upload.id)

    def _send_all(self, messages: Any, retain: bool = True) -> None:
        """Publish (topic, data) pairs, at most IN_FLIGHT unacknowledged; return once every
        one is acknowledged."""
        waiting: deque[tuple[str, Delivery]] = deque()
        for topic, data in messages:
            if len(waiting) >= IN_FLIGHT:
                self._acknowledged(*waiting.popleft())
            waiting.append((topic, self.link.send(topic, data, retain)))
        while waiting:
            self._acknowledged(*waiting.popleft())

    def _acknowledged(self, topic: str, delivery: Delivery) -> None:
        delivery.wait_for_publish(self.ack_timeout_s)
        if not delivery.is_published():
            raise RuntimeError(f"no PUBACK for {topic} within {self.ack_timeout_s:.0f}s")

    # -- what is kept of the uploads -----------------------------------------------------------
    def _write_record(self, last: dict[str, Any]) -> None:
        with self._lock:
            self.last = last
        self._save_record()

    def _save_record(self) -> None:
        with self._lock:
            record = {"last": self.last, "uploads": self.uploads}
        write_atomically(self.record_file, json.dumps(record).encode("utf-8"))

    def _read_record(self) -> None:
        """The last upload of an earlier run (to clear it), where the record is sound."""
        try:
            record = json.loads(self.record_file.read_text(encoding="utf-8"))
            last = record.get("last")
            if last is not None:
                ok = (isinstance(last.get("id"), str) and UPLOAD_ID.match(last["id"])
                      and isinstance(last.get("chunks"), int)
                      and 0 < last["chunks"] <= MAX_UPLOAD_CHUNKS)
                if not ok:
                    raise ValueError("last: not an upload")
            uploads = record.get("uploads", 0)
            self.last = last
            self.uploads = uploads if isinstance(uploads, int) and uploads >= 0 else 0
        except FileNotFoundError:
            return
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("%s cannot be read (%s): the previous upload is not cleared",
                        self.record_file, exc)

    def to_dict(self) -> dict[str, Any]:
        """For the status (`fleet.windows`)."""
        with self._lock:
            last = None if self.last is None else {k: self.last.get(k)
                                                   for k in ("id", "reason", "ts")}
            return {"uploads": self.uploads, "uploads_failed": self.failed,
                    "uploads_refused": self.refused, "uploading": self._busy,
                    "last_upload": last, "last_upload_error": self.last_error}

    def close(self, timeout_s: float = 10.0) -> None:
        """Wait a while for an upload in progress (what is not sent by then is not)."""
        if self._thread is not None:
            self._thread.join(timeout_s)


class DriftWatch:
    """`[fleet] drift_margin`: after each profiling window, the mean over the predicted models
    of their live ensemble agreement (from the activated models, as measured in the window)
    against the bundle profile's figure for the same ensembles; where the live one is lower by
    more than the margin, an upload with reason `drift` (at most one per `min_interval_s`)."""

    def __init__(self, margin: float, min_interval_s: float, upload: Callable[[str], bool],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.margin = margin
        self.min_interval_s = min_interval_s
        self.upload = upload
        self.clock = clock
        self.checks = 0
        self.drifts = 0  # windows past the margin
        self.triggered = 0  # uploads started for a drift
        self.last: dict[str, float] | None = None
        self._last_upload: float | None = None

    def observe(self, figures: tuple[float, float] | None) -> bool:
        """One window's (bundle's, live) means, None where none was measured; True where it
        started an upload."""
        if figures is None:
            return False
        offline, live = figures
        self.checks += 1
        self.last = {"bundle": round(offline, 4), "live": round(live, 4)}
        if offline - live <= self.margin:
            return False
        self.drifts += 1
        now = self.clock()
        if self._last_upload is not None and now - self._last_upload < self.min_interval_s:
            return False
        log.warning("drift: live agreement of the predicted models %.3f, the bundle's %.3f "
                    "(margin %.3f): uploading the windows' rows", live, offline, self.margin)
        if not self.upload("drift"):
            return False
        self._last_upload = now
        self.triggered += 1
        return True

    def to_dict(self) -> dict[str, Any]:
        return {"margin": self.margin, "min_interval_s": self.min_interval_s,
                "checks": self.checks, "drifts": self.drifts, "uploads": self.triggered,
                "last": self.last}
