"""An upload job: the manifest a box publishes on `<prefix>/fleet/relink` (and retained on
`<prefix>/<device>/uploads/<id>`), read and bounded before anything is done with it
(docs/mqtt.md, "Uploads and relinking").

A job that is not one (not JSON, too large, a key missing or out of bounds) is refused with
`JobRefused`, whose message names the key; keys this worker does not know are ignored (a box
newer than the worker may say more)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from agent.transport.topics import Topics

MAX_JOB_BYTES = 16 * 1024
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
MAX_CHUNKS = 4096
MAX_CHUNK_BYTES = 1024 * 1024
MAX_ROWS = 10_000_000
MAX_GROUPS = 64
UPLOAD_ID = re.compile(r"^[a-z0-9-]{1,40}$")
IDENTIFIER = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # device ids and group names (agent config)
SHA256 = re.compile(r"^[0-9a-f]{64}$")


class JobRefused(ValueError):
    """A job this worker does not act on; the message says what and where."""


@dataclass(frozen=True)
class Job:
    upload: str
    device: str
    groups: tuple[str, ...]
    rows: int
    chunks: int
    size: int
    sha256: str
    reason: str
    ts: float
    bundle: dict[str, str]  # name, version: the bundle the rows were recorded under

    def manifest_topic(self, prefix: str) -> str:
        return Topics(prefix, self.device).upload(self.upload)

    def chunk_topic(self, prefix: str, index: int) -> str:
        return Topics(prefix, self.device).upload_chunk(self.upload, index)

    def same_upload(self, other: Job) -> bool:
        """The retained manifest and the job describe the same bytes."""
        return (self.upload, self.device, self.rows, self.chunks, self.size, self.sha256) == (
            other.upload, other.device, other.rows, other.chunks, other.size, other.sha256)

    def to_dict(self) -> dict[str, Any]:
        return {"upload": self.upload, "device": self.device, "groups": list(self.groups),
                "rows": self.rows, "chunks": self.chunks, "size": self.size,
                "sha256": self.sha256, "reason": self.reason, "ts": self.ts,
                "bundle": dict(self.bundle)}


def _no_constant(name: str) -> Any:
    raise JobRefused(f"{name} is not a number a job may carry (numbers must be finite)")


def _int(body: dict[str, Any], key: str, low: int, high: int) -> int:
    value = body.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise JobRefused(f"{key}: an integer in [{low}, {high}] is needed, got {value!r}"[:200])
    return value


def _text(body: dict[str, Any], key: str, pattern: re.Pattern[str] | None, limit: int) -> str:
    value = body.get(key)
    if not isinstance(value, str) or len(value) > limit or (
            pattern is not None and not pattern.match(value)):
        rule = f"matching {pattern.pattern}" if pattern is not None else f"of <= {limit} chars"
        raise JobRefused(f"{key}: a string {rule} is needed, got {value!r}"[:200])
    return value


def parse_job(payload: bytes) -> Job:
    """The job in `payload`, bounded (module doc), or JobRefused."""
    if len(payload) > MAX_JOB_BYTES:
        raise JobRefused(f"the job is larger than {MAX_JOB_BYTES} bytes")
    try:
        body = json.loads(payload, parse_constant=_no_constant)
    except RecursionError:
        raise JobRefused("the job is nested too deeply") from None
    except ValueError as exc:  # not UTF-8, not JSON (JobRefused passes through as is)
        if isinstance(exc, JobRefused):
            raise
        raise JobRefused(f"the job is not JSON ({exc})"[:200]) from None
    if not isinstance(body, dict):
        raise JobRefused("the job must be a JSON object")
    groups = body.get("groups")
    if not isinstance(groups, list) or len(groups) > MAX_GROUPS or not all(
            isinstance(g, str) and IDENTIFIER.match(g) for g in groups):
        raise JobRefused(f"groups: a list of at most {MAX_GROUPS} group names is needed")
    ts = body.get("ts")
    if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not math.isfinite(ts) \
            or not 0 <= ts < 1e11:
        raise JobRefused(f"ts: epoch seconds are needed, got {ts!r}"[:200])
    bundle = body.get("bundle", {})
    if not isinstance(bundle, dict) or len(bundle) > 8 or not all(
            isinstance(k, str) and len(k) <= 32 and isinstance(v, (str, int))
            and not isinstance(v, bool) and len(str(v)) <= 256 for k, v in bundle.items()):
        raise JobRefused("bundle: an object of a few short strings (name, version) is needed")
    size = _int(body, "size", 1, MAX_UPLOAD_BYTES)
    chunks = _int(body, "chunks", 1, MAX_CHUNKS)
    if size > chunks * MAX_CHUNK_BYTES:
        raise JobRefused(f"size: {size} bytes cannot come in {chunks} chunks of at most "
                         f"{MAX_CHUNK_BYTES} bytes")
    return Job(upload=_text(body, "upload", UPLOAD_ID, 40),
               device=_text(body, "device", IDENTIFIER, 64),
               groups=tuple(groups), rows=_int(body, "rows", 1, MAX_ROWS), chunks=chunks,
               size=size, sha256=_text(body, "sha256", SHA256, 64),
               reason=_text({"reason": body.get("reason", "")}, "reason", None, 64),
               ts=float(ts),
               bundle={str(k): str(v) for k, v in bundle.items()})
