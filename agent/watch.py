"""`mlink-agent watch`: a live terminal view for a person at a subscriber — per device its
status line, per camera and model the latest value (from the frame messages), executed or
predicted, and estimated agreement."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import Any, TextIO

import paho.mqtt.client as mqtt

from agent.transport import PublishError, parse

log = logging.getLogger(__name__)

CLEAR = "\x1b[H\x1b[2J"


def _read(output: dict[str, Any]) -> str:
    """The output as a person reads it: the decoded label, labels, box or number."""
    if output.get("withheld"):
        return f"(withheld: {output['withheld']})"
    decoded = output.get("decoded")
    if decoded is not None and not isinstance(decoded, dict):  # already read: words, a name
        return decoded if isinstance(decoded, str) else json.dumps(decoded)
    decoded = decoded or {}
    if "name" in decoded:
        return str(decoded["name"])
    for key in ("labels", "box", "value", "tokens"):
        if key in decoded:
            value = decoded[key]
            return json.dumps(value) if not isinstance(value, float) else f"{value:.3f}"
    values = output.get("value") or []
    shown = ", ".join(f"{v:.3f}" for v in values[:4])
    return f"[{shown}{', ...' if len(values) > 4 else ''}]"


class Watch:
    def __init__(self, host: str, port: int, prefix: str = "mlink",
                 device: str | None = None) -> None:
        self.prefix = prefix
        self.device = device
        self.devices: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._host, self._port = host, port
        self._client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                   client_id=f"mlink-watch-{time.monotonic_ns()}",
                                   protocol=mqtt.MQTTv5)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        root = f"{self.prefix}/{self.device or '+'}"
        client.subscribe([(f"{root}/status", 1), (f"{root}/availability", 1),
                          (f"{root}/frames/+", 0)])

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        ref = parse(message.topic, self.prefix)
        if ref is None:
            return
        try:
            with self._lock:
                entry = self.devices.setdefault(ref.device, {"models": {}, "status": None,
                                                             "availability": "?"})
                if ref.kind == "availability":
                    entry["availability"] = message.payload.decode("utf-8", "replace")
                elif ref.kind == "status":
                    entry["status"] = json.loads(message.payload)
                elif ref.kind == "frames":
                    frame = json.loads(message.payload)
                    for model, output in frame["outputs"].items():
                        entry["models"][(model, ref.name)] = {**output,
                                                              "frame_id": frame["frame_id"]}
        except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
            log.debug("unreadable message on %s", message.topic)

    def start(self) -> Watch:
        try:
            self._client.connect(self._host, self._port)
        except OSError as exc:
            raise PublishError(f"cannot connect to the MQTT broker at {self._host}:"
                               f"{self._port}: {exc.strerror or exc}") from None
        self._client.loop_start()
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def render(self) -> str:
        with self._lock:
            devices = {d: {**e, "models": dict(e["models"])} for d, e in self.devices.items()}
        if not devices:
            where = self.device or "any device"
            return f"waiting for {self.prefix}/{where} on {self._host}:{self._port} ...\n"
        lines = []
        for device, entry in sorted(devices.items()):
            lines.append(self._status_line(device, entry))
            lines.append(f"  {'model[@camera]':<24} {'provenance':<10} {'est.agr':>7} "
                         f"{'latency':>9} {'frame':>8}  value")
            cameras = {camera for _, camera in entry["models"]}
            for (model, camera), output in sorted(entry["models"].items()):
                name = model if len(cameras) == 1 else f"{model}@{camera}"
                lines.append(
                    f"  {name:<24} {output.get('provenance', '?'):<10} "
                    f"{output.get('est_agreement', 0.0):>7.3f} "
                    f"{output.get('latency_ms', 0.0):>7.2f}ms {output.get('frame_id', ''):>8}  "
                    f"{_read(output)}")
            lines.append("")
        return "\n".join(lines) + "\n"

    @staticmethod
    def _status_line(device: str, entry: dict[str, Any]) -> str:
        status = entry.get("status") or {}
        selection = status.get("selection") or {}
        outbox = status.get("outbox") or {}
        rss = status.get("rss_mb")
        own = (status.get("overhead") or {}).get("agent_ms_per_frame")
        return (f"{device}  [{entry.get('availability')}] {status.get('state', '?')}  "
                f"{status.get('fps', 0.0):.1f} fps  frames {status.get('frames', 0)}  "
                f"policy {selection.get('policy', '?')}  "
                f"active {','.join(selection.get('active', [])) or '-'}  "
                f"expected agreement {selection.get('expected_agreement', 0.0):.3f}  "
                f"rss {'?' if rss is None else f'{rss:.1f} MB'}  "
                f"agent {'?' if own is None else f'{own:.2f} ms'}/frame  "
                f"outbox {status.get('outbox_depth', 0)} (dropped {outbox.get('dropped', 0)})  "
                f"config v{status.get('config_version', 0)}")


def watch(host: str, port: int, prefix: str = "mlink", device: str | None = None,
          duration_s: float | None = None, out: TextIO = sys.stdout) -> int:
    """Redraw every half second; with `duration_s`, print the view once at the end instead
    (for scripts and logs)."""
    view = Watch(host, port, prefix, device).start()
    deadline = None if duration_s is None else time.monotonic() + duration_s
    try:
        while deadline is None or time.monotonic() < deadline:
            if deadline is None:
                out.write(CLEAR + view.render())
                out.flush()
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        view.stop()
    if deadline is not None:
        out.write(view.render())
    return 0
