"""MQTT publishing under the DESIGN contract (root `<prefix>/<device_id>/`).

paho-mqtt 2.x with CallbackAPIVersion.VERSION2, MQTT v5 by default. `availability` is
retained: `online` after each connect, `stopped` on a clean exit, `offline` as the LWT.
Outputs go out at QoS 1; `drain()` waits for every PUBACK before a clean exit. Nothing
blocking runs in paho's callbacks.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

from agent.config import MqttConfig

log = logging.getLogger(__name__)


class PublishError(RuntimeError):
    pass


class Topics:
    def __init__(self, prefix: str, device_id: str) -> None:
        self.root = f"{prefix}/{device_id}"

    @property
    def availability(self) -> str:
        return f"{self.root}/availability"

    @property
    def status(self) -> str:
        return f"{self.root}/status"

    def output(self, model_id: str) -> str:
        return f"{self.root}/models/{model_id}/output"


def dumps(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode("utf-8")


class Publisher:
    def __init__(self, config: MqttConfig, device_id: str) -> None:
        self.config = config
        self.topics = Topics(config.prefix, device_id)
        protocol = mqtt.MQTTv5 if config.protocol == "5" else mqtt.MQTTv311
        self._client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=config.client_id or f"mlink-agent-{device_id}",
            protocol=protocol,
        )
        self._client.will_set(self.topics.availability, "offline", qos=1, retain=True)
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._connected = threading.Event()
        self._pending: list[mqtt.MQTTMessageInfo] = []
        self.published = 0

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        if reason_code.is_failure:
            log.error("broker refused the connection: %s", reason_code)
            return
        log.info("connected to %s:%s", self.config.host, self.config.port)
        client.publish(self.topics.availability, "online", qos=1, retain=True)
        self._connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        self._connected.clear()
        log.warning("disconnected from the broker: %s", reason_code)

    def connect(self, timeout_s: float = 10.0) -> None:
        self._client.connect_async(self.config.host, self.config.port, self.config.keepalive_s)
        self._client.loop_start()
        if not self._connected.wait(timeout_s):
            raise PublishError(
                f"no connection to the MQTT broker at {self.config.host}:{self.config.port} "
                f"within {timeout_s:.0f}s"
            )

    def publish(self, topic: str, payload: Any, qos: int | None = None,
                retain: bool = False) -> None:
        data = payload if isinstance(payload, (bytes, str)) else dumps(payload)
        info = self._client.publish(topic, data, qos=self.config.qos if qos is None else qos,
                                    retain=retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise PublishError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        self.published += 1
        self._pending.append(info)
        if len(self._pending) > 1000:
            self._pending = [i for i in self._pending if not i.is_published()]

    @property
    def pending(self) -> int:
        self._pending = [i for i in self._pending if not i.is_published()]
        return len(self._pending)

    def drain(self, timeout_s: float = 30.0) -> bool:
        """Wait until every QoS 1 publish is acknowledged; False if time ran out."""
        deadline = time.monotonic() + timeout_s
        while self.pending:
            if time.monotonic() > deadline:
                log.error("%d messages still unacknowledged after %.0fs", self.pending, timeout_s)
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout_s: float = 30.0) -> bool:
        """Clean exit: drain, publish `stopped`, disconnect (so the LWT is not sent)."""
        drained = self.drain(timeout_s)
        if self._connected.is_set():
            info = self._client.publish(self.topics.availability, "stopped", qos=1, retain=True)
            info.wait_for_publish(timeout=5.0)
        self._client.disconnect()
        self._client.loop_stop()
        return drained
