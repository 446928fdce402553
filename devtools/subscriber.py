"""A subscriber to one agent's topics: collects its frame messages (and each model's output
in them), status and availability.

Used by the demo and the tests to see what a real MQTT client sees.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from typing import Any

import paho.mqtt.client as mqtt

from agent.output import model_entries
from agent.transport import Topics

log = logging.getLogger(__name__)


class Collector:
    def __init__(self, host: str, port: int, prefix: str, device_id: str) -> None:
        self.topics = Topics(prefix, device_id)
        self.frames: list[dict[str, Any]] = []  # the frame messages
        self.outputs: list[dict[str, Any]] = []  # every model's entry, with the frame's fields
        self.retained: dict[str, Any] = {}
        self.availability: list[str] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"mlink-collector-{device_id}-{time.monotonic_ns()}",
            protocol=mqtt.MQTTv5,
        )
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *args: self._subscribed.set()
        self._client.on_message = self._on_message
        self._host, self._port = host, port

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe(f"{self.topics.root}/#", qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        ref = self.topics.parse(message.topic)
        with self._lock:
            if ref is None:
                return
            if ref.kind == "availability":
                self.availability.append(message.payload.decode())
            elif ref.kind == "frames":
                frame = json.loads(message.payload)
                self.frames.append(frame)
                self.outputs.extend(model_entries(frame))
            elif ref.kind != "output":
                self.retained[message.topic] = json.loads(message.payload)

    def start(self, timeout_s: float = 10.0) -> Collector:
        self._client.connect(self._host, self._port)
        self._client.loop_start()
        if not self._subscribed.wait(timeout_s):
            raise TimeoutError(f"could not subscribe at {self._host}:{self._port}")
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def wait_for_outputs(self, count: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.outputs) >= count:
                    return True
            time.sleep(0.05)
        return False

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.outputs)

    def counts(self) -> Counter[tuple[int, str]]:
        return Counter((o["frame_id"], o["model"]) for o in self.snapshot())

    @property
    def status(self) -> dict[str, Any] | None:
        with self._lock:
            return self.retained.get(self.topics.status)

    @property
    def costs(self) -> dict[str, Any] | None:
        """The latest `status/costs`: the measured model and link costs."""
        with self._lock:
            return self.retained.get(self.topics.status_costs)
