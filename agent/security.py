"""Signed remote requests: HMAC-SHA256 with a key held on the box.

A broker is often shared, and its ACL is only as good as its weakest login; with
`[control] require_signature = true` the agent obeys a `config/set` or `cmd/<name>` only when
it was signed with the key in `[control] key_file` / `key_credential`.

A signed request is an envelope around the request's exact JSON text, so that what is
signed is a byte string, not a re-serialisation of parsed JSON:

    {"signed": "<the request JSON, as a string>", "signature": "<64 lowercase hex>"}

    signature = HMAC-SHA256(key, b"mlink-hmac-sha256-v1\\n" + topic + b"\\n" + signed)

with `topic` the full topic the envelope is published to (`mlink/box-1/cmd/bundle`, UTF-8)
and `signed` the UTF-8 bytes of the string. The topic binds the request to one device and
one kind of request. `config/set` is protected from replay by its growing `version` (so a
signed one must carry it: agent.control.settings); a signed command must carry `expires`
(Unix seconds, at most one hour ahead) and is refused after it, or when the same signature
is presented twice before it. The signatures used are kept until they expire in the state
directory (`signatures.json`, written atomically before the command is obeyed), so a restart
does not reopen the window for a captured command."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

from agent.errors import RequestError
from agent.files import write_atomically
from agent.limits import LimitError, parse_json

log = logging.getLogger(__name__)

SCHEME = b"mlink-hmac-sha256-v1"
ENVELOPE_KEYS = frozenset({"signed", "signature"})
SIGNATURE = re.compile(r"^[0-9a-f]{64}$")
MAX_EXPIRY_AHEAD_S = 3600.0

class SignatureError(RequestError):
    """A request refused for its signature: its reply echoes the transaction it claims."""


def signing_bytes(topic: str, signed: str) -> bytes:
    """Exactly the bytes the HMAC covers."""
    return SCHEME + b"\n" + topic.encode("utf-8") + b"\n" + signed.encode("utf-8")


def signature(key: bytes, topic: str, signed: str) -> str:
    return hmac.new(key, signing_bytes(topic, signed), hashlib.sha256).hexdigest()


def sign(key: bytes, topic: str, request: dict[str, Any] | str) -> bytes:
    """The envelope payload for `request` on `topic` (for operators' tools and the tests)."""
    signed = request if isinstance(request, str) else json.dumps(request, separators=(",", ":"))
    return json.dumps({"signed": signed, "signature": signature(key, topic, signed)}).encode()


def is_envelope(request: dict[str, Any]) -> bool:
    return bool(ENVELOPE_KEYS & set(request))


class Verifier:
    """Opens signed envelopes and refuses what the policy does not allow."""

    def __init__(self, key: bytes | None, required: bool,
                 seen_file: Path | None = None) -> None:
        """`seen_file` keeps the used command signatures across restarts (none: in memory)."""
        if required and key is None:
            raise ValueError("a required signature needs a key")
        self._key = key
        self.required = required
        self._seen_file = seen_file
        self._seen: dict[str, float] = self._load_seen()  # signatures used, until they expire

    def open(self, topic: str, request: dict[str, Any], command: bool,
             now: float | None = None) -> dict[str, Any]:
        """The request to act on: the inner one of a valid envelope, or `request` itself when
        it is unsigned and signatures are not required."""
        if not is_envelope(request):
            if self.required:
                raise SignatureError([("signature", "this agent obeys only signed requests "
                                                    "(HMAC-SHA256, see docs/mqtt.md)")])
            return request
        extra = sorted(set(request) - ENVELOPE_KEYS)
        if extra:
            raise SignatureError([("", f"a signed request holds only 'signed' and "
                                       f"'signature', not {extra}")])
        signed, given = request.get("signed"), request.get("signature")
        if not isinstance(signed, str):
            raise SignatureError([("signed", "must be the request's JSON text, as a string")])
        if not isinstance(given, str) or not SIGNATURE.match(given):
            raise SignatureError([("signature", "must be 64 lowercase hex digits")])
        if self._key is None:
            raise SignatureError([("signature", "this agent has no signing key ([control] "
                                                "key_file or key_credential)")])
        if not hmac.compare_digest(signature(self._key, topic, signed), given):
            raise SignatureError([("signature", f"wrong signature for {topic} (not made with "
                                                f"this agent's key, or the request or topic "
                                                f"was altered)")])
        try:
            inner = parse_json(signed, len(signed.encode("utf-8", "surrogatepass")))
        except LimitError as exc:
            raise SignatureError([("signed", m) for _, m in exc.errors]) from None
        if not isinstance(inner, dict):
            raise SignatureError([("signed", "expected a JSON object")])
        if is_envelope(inner):
            raise SignatureError([("signed", "holds another signed envelope")])
        if command:
            self._check_fresh(inner, given, time.time() if now is None else now)
        return inner

    def _check_fresh(self, inner: dict[str, Any], given: str, now: float) -> None:
        expires = inner.get("expires")
        if isinstance(expires, bool) or not isinstance(expires, (int, float)) \
                or expires != expires:
            raise SignatureError([("expires", "a signed command needs 'expires': Unix seconds "
                                              "after which it is refused")])
        if expires < now:
            raise SignatureError([("expires", f"expired {now - expires:.0f} s ago")])
        if expires > now + MAX_EXPIRY_AHEAD_S:
            raise SignatureError([("expires", f"more than {MAX_EXPIRY_AHEAD_S:.0f} s ahead")])
        self._seen = {s: e for s, e in self._seen.items() if e >= now}
        if given in self._seen:
            raise SignatureError([("signature", "replayed: this signed command was already "
                                                "received")])
        self._remember(given, float(expires))

    def _load_seen(self) -> dict[str, float]:
        """The unexpired signatures an earlier process used; an unreadable file is logged and
        replaced (it only ever holds what a restart would otherwise forget)."""
        if self._seen_file is None or not self._seen_file.exists():
            return {}
        try:
            stored = json.loads(self._seen_file.read_text("utf-8"))
            now = time.time()
            return {str(s): float(e) for s, e in stored["seen"].items()
                    if SIGNATURE.match(str(s)) and float(e) >= now}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.error("%s is unreadable (%s): signed commands used before this start are "
                      "not remembered", self._seen_file, exc)
            return {}

    def _remember(self, given: str, expires: float) -> None:
        """Record a used signature, on disk before the command is obeyed: if it cannot be
        recorded, the command is refused rather than left replayable."""
        seen = {**self._seen, given: expires}
        if self._seen_file is not None:
            try:
                write_atomically(self._seen_file, json.dumps({"seen": seen}).encode())
            except OSError as exc:
                raise SignatureError([("signature", f"cannot record it against replay "
                                                    f"({exc}); refused")]) from None
        self._seen = seen
