"""Simulated boxes for control-plane load tests: each is its own MQTT client (its own session,
its own will) that keeps the agent's control contract — retained `availability`, a retained
`config/state` with `version` and `settable`, a retained `status` every `status_every_s` with
`config_version`, `selection.expected_agreement`, `fps` and a growing `counters.published` —
and answers `config/set` as the agent does: a version above the one in force (or none: the
next) is applied
(merged key by key) and acknowledged on `config/response` with the request's transaction,
anything else refused. No models run: what is measured is the control plane.

    python -m devtools.simbox --port PORT --first 0 --count 250   # box-0000 .. box-0249
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

from agent.control.patching import merge

SETTABLE: dict[str, Any] = {"budget": {"memory_mb": 100.0, "delay_ms": None},
                            "selection": {"policy": "exact"},
                            "profiling": {"period_frames": 0},
                            "publish": {"decoded": True}}


class SimBox:
    def __init__(self, device: str, port: int, prefix: str = "mlink",
                 host: str = "127.0.0.1") -> None:
        self.root = f"{prefix}/{device}"
        self.version = 1
        self.settable = merge(SETTABLE, {})  # a deep copy
        self.published = 0
        self.lock = threading.Lock()
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"sim-{device}")
        self.client.will_set(f"{self.root}/availability", "offline", qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect_async(host, port)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe(f"{self.root}/config/set", qos=1)
        client.publish(f"{self.root}/availability", "online", qos=1, retain=True)
        self._state()
        self.status()

    def _state(self) -> None:
        self.client.publish(f"{self.root}/config/state", json.dumps(
            {"version": self.version, "transaction": None, "settable": self.settable}),
            qos=1, retain=True)

    def status(self) -> None:
        with self.lock:
            self.published += 10
            body = {"state": "running", "config_version": self.version, "fps": 10.0,
                    "selection": {"policy": self.settable["selection"]["policy"],
                                  "expected_agreement": 0.9, "active": ["a"]},
                    "counters": {"published": self.published}}
        self.client.publish(f"{self.root}/status", json.dumps(body), qos=1, retain=True)

    def _on_message(self, client: mqtt.Client, _userdata: Any,
                    message: mqtt.MQTTMessage) -> None:
        try:
            request = json.loads(message.payload)
            transaction = request.pop("transaction", None)
            version = request.pop("version", None)
        except (ValueError, AttributeError, RecursionError):
            return
        errors = []
        with self.lock:
            if version is None:  # absent: the next version, as the agent does
                version = self.version + 1
            if not isinstance(version, int) or version <= self.version:
                errors.append({"path": "version", "message": f"stale: {self.version} in force"})
            else:
                self.settable = merge(self.settable, request)
                self.version = version
        client.publish(f"{self.root}/config/response", json.dumps(
            {"status": "error" if errors else "ok", "transaction": transaction,
             "version": self.version, "errors": errors, "applied": sorted(request)}), qos=1)
        if not errors:
            self._state()
            self.status()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def main(argv: list[str] | None = None) -> int:
    args = argparse.ArgumentParser(description=__doc__)
    args.add_argument("--port", type=int, required=True)
    args.add_argument("--first", type=int, default=0)
    args.add_argument("--count", type=int, default=100)
    args.add_argument("--status-every-s", type=float, default=2.0)
    options = args.parse_args(argv)
    boxes = [SimBox(f"box-{i:04d}", options.port)
             for i in range(options.first, options.first + options.count)]
    try:
        while True:
            time.sleep(options.status_every_s)
            for box in boxes:
                box.status()
    except KeyboardInterrupt:
        pass
    finally:
        for box in boxes:
            box.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
