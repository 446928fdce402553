"""Bounds on what enters the agent remotely, checked before anything else looks at it.

- `parse_json`: a request's JSON with bounded size, nesting depth and number length; NaN and
  Infinity refused; a refusal is a `LimitError` naming what is wrong (Python's own parser
  would recurse until RecursionError on deep nesting and convert a 5,000-digit number only
  to fail on it).
- `check_numbers`: every number of a parsed request finite and within +-2**53 (what a JSON
  number holds exactly everywhere), named by its path in the request.
- `check_version`: a `version` is an integer in [0, MAX_VERSION].
- `check_response_topic`: an MQTT v5 ResponseTopic the agent may publish to: under its own
  reply namespace or a configured allow-list, with bounded length and levels.
- `RateLimiter`: a token bucket per request topic, so that a burst of requests cannot hold the
  control thread (and the frame lock) and starve the outputs.
- `MAX_UPLOAD_BYTES`, `MAX_UPLOAD_CHUNKS`, `MAX_REASON_CHARS`: an upload of the profiling
  windows' rows (agent.uploads), the bounds the trainer's collector holds it to.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections import OrderedDict
from typing import Any

import paho.mqtt.client as mqtt

from agent.errors import Errors, RequestError

MAX_DEPTH = 32  # nesting of objects and arrays in a request
MAX_NUMBER_CHARS = 40  # characters of one JSON number literal
MAX_SAFE = 2**53  # the largest integer every JSON reader holds exactly
MAX_VERSION = MAX_SAFE
MAX_TOPIC_BYTES = 256  # a ResponseTopic, UTF-8
MAX_TOPIC_LEVELS = 16
MAX_CORRELATION_BYTES = 256
MAX_ERROR_CHARS = 300  # of one path or message echoed in a reply
MAX_UPLOAD_BYTES = 64 << 20  # an upload's .npz (cmd/upload, docs/mqtt.md)
MAX_UPLOAD_CHUNKS = 4096  # its chunks, each at most `[fleet] upload_chunk_kb` (<= 1 MiB)
MAX_REASON_CHARS = 64  # an upload's `reason`

class LimitError(RequestError):
    """A value beyond a bound (size, nesting, a number, a version, a reply topic)."""


_TOKENS = re.compile(r'[\[\]{}"\\]')


def _depth_check(text: str, max_depth: int) -> None:
    """Refuse nesting deeper than `max_depth` without recursing (strings skipped)."""
    depth, in_string, escaped = 0, False, -1
    for match in _TOKENS.finditer(text):
        at, char = match.start(), match.group()
        if in_string:
            if at == escaped:
                continue
            if char == "\\":
                escaped = at + 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > max_depth:
                raise LimitError([("", f"nested deeper than {max_depth} levels")])
        elif char in "]}":
            depth -= 1


class _Refused:
    """A number literal kept unconverted, so that the refusal can name its path."""

    def __init__(self, why: str) -> None:
        self.why = why


def _int(literal: str) -> int | _Refused:
    if len(literal) > MAX_NUMBER_CHARS:
        return _Refused(f"a number of {len(literal)} digits (at most {MAX_NUMBER_CHARS} "
                        f"characters)")
    return int(literal)


def _float(literal: str) -> float | _Refused:
    if len(literal) > MAX_NUMBER_CHARS:
        return _Refused(f"a number of {len(literal)} characters (at most {MAX_NUMBER_CHARS})")
    value = float(literal)
    if not math.isfinite(value):
        return _Refused(f"{literal} is out of range: numbers must be finite")
    return value


def _constant(name: str) -> _Refused:
    return _Refused(f"{name} is not a number: numbers must be finite")


def parse_json(payload: bytes | bytearray | str, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value of `payload`, or LimitError: too large, nested too deep, not JSON, or a
    number too long, not finite or beyond +-2**53 (each named by its path)."""
    if len(payload) > max_bytes:
        raise LimitError([("", f"request larger than {max_bytes} bytes")])
    try:
        text = payload.decode("utf-8") if isinstance(payload, (bytes, bytearray)) else payload
    except UnicodeDecodeError as exc:
        raise LimitError([("", f"not valid JSON: not UTF-8 ({exc.reason} at byte "
                               f"{exc.start})")]) from None
    _depth_check(text, max_depth)
    try:
        value = json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except json.JSONDecodeError as exc:
        raise LimitError([("", f"not valid JSON: {exc}")]) from None
    except RecursionError:  # not reached after the depth check; a last guard
        raise LimitError([("", f"nested deeper than {max_depth} levels")]) from None
    errors = check_numbers(value)
    if errors:
        raise LimitError(errors)
    return value


def check_numbers(value: Any, path: str = "", errors: Errors | None = None,
                  limit: int = MAX_SAFE) -> Errors:
    """Every number in `value` finite and within +-`limit`; (path, message) per offender."""
    errors = [] if errors is None else errors
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return errors
    if isinstance(value, _Refused):
        errors.append((path, value.why))
    elif isinstance(value, (int, float)):
        if not math.isfinite(value) or abs(value) > limit:
            shown = value if isinstance(value, float) or abs(value) < 10**30 \
                else f"a {len(str(abs(value)))}-digit number"
            errors.append((path, f"{shown} is out of range: numbers must be finite and "
                                 f"within +-2**53"))
    elif isinstance(value, dict):
        for key, item in value.items():
            check_numbers(item, f"{path}.{key}" if path else str(key), errors, limit)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_numbers(item, f"{path}.{index}" if path else str(index), errors, limit)
    return errors


def check_version(version: Any, in_force: int) -> None:
    """A requested `version`: an integer in (in_force, MAX_VERSION]."""
    if isinstance(version, bool) or not isinstance(version, int):
        raise LimitError([("version", f"required: an integer above the version in force "
                                      f"({in_force}) and at most 2**53")])
    if version > MAX_VERSION:
        raise LimitError([("version", f"out of range: a version is an integer in "
                                      f"[0, 2**53] (in force: {in_force})")])
    if version < 0:
        raise LimitError([("version", f"stale: {version} is not above the version in force "
                                      f"({in_force})")])


def clip(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def check_response_topic(topic: str, own_root: str, allowed: tuple[str, ...],
                         forbidden: tuple[str, ...]) -> str | None:
    """Why the agent will not publish a reply on `topic`, or None when it may: the topic is
    `<own_root>/reply/...` or matches a filter of `allowed`, has at most MAX_TOPIC_BYTES and
    MAX_TOPIC_LEVELS, no wildcard, no NUL, no leading `$`, and matches none of `forbidden`
    (the agent's own request topics)."""
    size = len(topic.encode("utf-8", "surrogatepass"))
    if not topic or size > MAX_TOPIC_BYTES:
        return f"must be 1-{MAX_TOPIC_BYTES} bytes (it is {size})"
    if topic.count("/") + 1 > MAX_TOPIC_LEVELS:
        return f"more than {MAX_TOPIC_LEVELS} levels"
    if set(topic) & {"+", "#", "\x00"} or topic.startswith("$"):
        return "must not hold wildcards or NUL nor start with '$'"
    if any(mqtt.topic_matches_sub(f, topic) for f in forbidden):
        return "is one of the agent's own request topics"
    if topic.startswith(f"{own_root}/reply/") or any(
            mqtt.topic_matches_sub(f, topic) for f in allowed):
        return None
    return (f"not under {own_root}/reply/ nor in [control] response_topics"
            f"{' (' + ', '.join(allowed) + ')' if allowed else ''}")


class RateLimiter:
    """A token bucket per key (`rate` per second, up to `burst` at once); at most `max_keys`
    keys are tracked (the least recently seen is forgotten). Thread-safe."""

    def __init__(self, rate: float, burst: int, max_keys: int = 256) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()
        self.limited: dict[str, int] = {}

    def allow(self, key: str, now: float | None = None) -> bool:
        if self.rate <= 0:
            return True
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.pop(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            allowed = tokens >= 1.0
            self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            if not allowed:
                self.limited[key] = self.limited.get(key, 0) + 1
                while len(self.limited) > self.max_keys:
                    self.limited.pop(next(iter(self.limited)))
            return allowed
