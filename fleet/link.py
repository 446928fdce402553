"""The operator's connection to the boxes: what every box under a prefix has retained
(availability, status, config/state), kept current, and requests sent to one box with their
responses matched by transaction id.

Responses are read on each box's own response topics (`config/response`,
`cmd/<name>/response`), not on an MQTT v5 ResponseTopic, so the tool works through bridged
brokers whatever the bridge's protocol version. Every payload read here is bounded and parsed
as JSON; one that is not is ignored and counted (`ignored`). Topics are read by the contract's
one parser (agent.transport.topics.parse)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

import paho.mqtt.client as mqtt

from agent.transport.topics import parse

MAX_PAYLOAD_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Box:
    """What the tool knows of one box, from its retained topics."""

    device: str
    availability: str | None = None
    status: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)  # config/state: version, settable
    status_seen: float | None = None  # monotonic time of the last status message
    statuses: int = 0  # status messages seen since the tool connected

    @property
    def version(self) -> int | None:
        version = self.state.get("version")
        return version if isinstance(version, int) else None


class FleetLink:
    """`FleetLink(host, port)` connects; `boxes()` is the current inventory; `request()` sends
    a request to one box and `response()` returns its answer once it came."""

    def __init__(self, host: str, port: int, prefix: str = "mlink",
                 username: str | None = None, password: str | None = None,
                 timeout_s: float = 10.0) -> None:
        self.prefix = prefix
        self.ignored = 0
        self._boxes: dict[str, Box] = {}
        self._responses: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                   client_id=f"mlink-fleet-{uuid.uuid4().hex[:8]}",
                                   protocol=mqtt.MQTTv5)
        if username is not None:
            self._client.username_pw_set(username, password)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *_: self._ready.set()
        self._client.on_message = self._on_message
        self._client.connect(host, port)
        self._client.loop_start()
        if not self._ready.wait(timeout_s):
            self.close()
            raise ConnectionError(f"no answer from the broker at {host}:{port} "
                                  f"within {timeout_s:.0f} s")

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason_code: Any,
                    _properties: Any) -> None:
        if reason_code.is_failure:
            return
        p = self.prefix
        client.subscribe([(f"{p}/+/availability", 1), (f"{p}/+/status", 1),
                          (f"{p}/+/config/state", 1), (f"{p}/+/config/response", 1),
                          (f"{p}/+/cmd/+/response", 1)])

    def _on_message(self, _client: mqtt.Client, _userdata: Any,
                    message: mqtt.MQTTMessage) -> None:
        ref = parse(message.topic, self.prefix)
        if ref is None or len(message.payload) > MAX_PAYLOAD_BYTES:
            self.ignored += 1
            return
        device, kind = ref.device, ref.kind
        if kind == "availability":
            self._update(device, availability=message.payload.decode("utf-8", "replace"))
            return
        try:
            payload = json.loads(message.payload)
        except (ValueError, RecursionError):  # not UTF-8, not JSON, nested too deeply
            self.ignored += 1
            return
        if not isinstance(payload, dict):
            self.ignored += 1
        elif kind == "status":
            with self._lock:
                box = self._boxes.get(device, Box(device))
                self._boxes[device] = replace(box, status=payload, status_seen=time.monotonic(),
                                              statuses=box.statuses + 1)
        elif kind == "config_state":
            self._update(device, state=payload)
        elif kind in ("config_response", "command_response") \
                and isinstance(payload.get("transaction"), str):
            with self._lock:
                self._responses[f"{device}/{payload['transaction']}"] = payload

    def _update(self, device: str, **changes: Any) -> None:
        with self._lock:
            self._boxes[device] = replace(self._boxes.get(device, Box(device)), **changes)

    def boxes(self) -> dict[str, Box]:
        with self._lock:
            return dict(self._boxes)

    def box(self, device: str) -> Box:
        with self._lock:
            return self._boxes.get(device, Box(device))

    def request(self, device: str, suffix: str, payload: dict[str, Any]) -> str:
        """Publish `payload` on `<prefix>/<device>/<suffix>` with a fresh transaction id;
        returns the id (its response: `response(device, id)`)."""
        transaction = f"fleet-{uuid.uuid4().hex[:12]}"
        body = json.dumps({**payload, "transaction": transaction}).encode("utf-8")
        self._client.publish(f"{self.prefix}/{device}/{suffix}", body, qos=1)
        return transaction

    def request_group(self, group: str, suffix: str, payload: dict[str, Any]) -> str:
        """Publish `payload` once on `<prefix>/groups/<group>/<suffix>`: every box of the
        group acts on it and answers on its own response topic with the returned id."""
        transaction = f"fleet-{uuid.uuid4().hex[:12]}"
        body = json.dumps({**payload, "transaction": transaction}).encode("utf-8")
        self._client.publish(f"{self.prefix}/groups/{group}/{suffix}", body, qos=1)
        return transaction

    def responses(self, transaction: str) -> dict[str, dict[str, Any]]:
        """Every box's answer to `transaction` so far, by device."""
        with self._lock:
            return {key.rsplit("/", 1)[0]: value for key, value in self._responses.items()
                    if key.endswith(f"/{transaction}")}

    def response(self, device: str, transaction: str) -> dict[str, Any] | None:
        with self._lock:
            return self._responses.get(f"{device}/{transaction}")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
