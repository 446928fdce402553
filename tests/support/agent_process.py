"""The agent as a real child process (TensorFlow refused, as on the box), a client that keeps
every message it sees and sends requests, and a persistent-session subscriber that counts what
was delivered across broker restarts, for the service and delivery tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.output import model_entries
from agent.transport.outbox import Outbox
from offline_trainer.workloads import get_workload
from offline_trainer.zoo import agent_config_text
from tests.conftest import LINKED_MODELS

ROOT = Path(__file__).resolve().parents[2]
DEVICE = "digits-demo"


def write_config(build_root: Path, port: int, state_dir: Path, memory_mb: float = 1.0,
                 fps: float = 20.0, extra: str = "") -> Path:
    """A looping, paced agent config next to the digits build, with its own state dir."""
    recipes = [r for r in get_workload("digits").recipes() if r.model_id in LINKED_MODELS]
    text = agent_config_text("digits", recipes, port, memory_mb)
    text = text.replace('path = "stream.npz"', f'path = "stream.npz"\nfps = {fps}\nloop = true')
    text += f'\n[state]\ndir = "{state_dir}"\n{extra}'
    path = build_root / f"agent-{uuid.uuid4().hex[:8]}.toml"
    path.write_text(text)
    return path


def wait_until(predicate: Callable[[], Any], timeout_s: float = 60.0,
               what: str = "condition") -> Any:
    """The first truthy value of `predicate`, polled; TimeoutError naming `what` after."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"{what} not met in {timeout_s:.0f} s")


class AgentProcess:
    def __init__(self, config: Path, env: dict[str, str] | None = None,
                 frames: int | None = None, log_file: Path | None = None) -> None:
        """`log_file`: the agent's output goes there rather than to a pipe read at the stop
        (a long run fills a pipe's buffer, and then every thread that logs blocks)."""
        guard = ROOT / "tests" / "support" / "agent_without_tensorflow.py"
        args = [sys.executable, str(guard), "run", "--config", str(config)]
        if frames:
            args += ["--frames", str(frames)]
        self.log_file = log_file
        output = subprocess.PIPE if log_file is None else log_file.open("w")
        self.process = subprocess.Popen(args, cwd=ROOT, env={**os.environ, **(env or {})},
                                        stdout=output, stderr=subprocess.STDOUT,
                                        text=True)
        if log_file is not None:
            output.close()  # the child holds its own copy

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout_s: float = 60.0) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            out, _ = self.process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
        if self.log_file is not None:
            out = self.log_file.read_text(errors="replace")
        return self.process.returncode, out


class Client:
    """An MQTT v5 client of one agent: keeps every message, sends requests."""

    def __init__(self, port: int, device: str = DEVICE, prefix: str = "mlink",
                 login: tuple[str, str] | None = None) -> None:
        self.root = f"{prefix}/{device}"
        self.messages: list[tuple[str, bytes, Any]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"test-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, *_: c.subscribe([(f"{self.root}/#", 1),
                                                            ("replies/#", 1)])
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        if login is not None:
            self.client.username_pw_set(*login)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self._subscribed.wait(10)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((message.topic, message.payload,
                                  getattr(message, "properties", None)))

    def json_on(self, topic: str) -> list[Any]:
        with self._lock:
            return [json.loads(p) for t, p, _ in self.messages if t == f"{self.root}/{topic}"]

    def outputs_of(self, model: str) -> list[Any]:
        """`model`'s entries of every frame message (any camera), with the frame's fields."""
        with self._lock:
            frames = [json.loads(p) for t, p, _ in self.messages
                      if t.startswith(f"{self.root}/frames/")]
        return [e for m in frames for e in model_entries(m) if e["model"] == model]

    def texts_on(self, topic: str) -> list[str]:
        with self._lock:
            return [p.decode() for t, p, _ in self.messages if t == f"{self.root}/{topic}"]

    def wait(self, predicate: Callable[[], Any], timeout_s: float = 60.0) -> Any:
        return wait_until(predicate, timeout_s)

    def latest(self, topic: str, where: Callable[[Any], bool] = lambda _: True,
               timeout_s: float = 60.0) -> Any:
        return self.wait(lambda: next((m for m in reversed(self.json_on(topic)) if where(m)),
                                      None), timeout_s)

    def request(self, topic: str, payload: Any, timeout_s: float = 60.0) -> Any:
        """Send to `<root>/<topic>` and wait for the answer on `<root>/<topic>/response`
        (cmd) or `<root>/config/response`, matched by transaction."""
        transaction = payload.get("transaction") if isinstance(payload, dict) else None
        data = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
        reply = "config/response" if topic == "config/set" else f"{topic}/response"
        seen = len(self.json_on(reply))
        self.client.publish(f"{self.root}/{topic}", data, qos=1)
        return self.wait(lambda: next((m for m in self.json_on(reply)[seen:]
                                       if m.get("transaction") == transaction), None),
                         timeout_s)

    def request_v5(self, topic: str, payload: Any, response_topic: str,
                   correlation: bytes) -> tuple[Any, Any]:
        properties = Properties(PacketTypes.PUBLISH)
        properties.ResponseTopic = response_topic
        properties.CorrelationData = correlation
        self.client.publish(f"{self.root}/{topic}", json.dumps(payload), qos=1,
                            properties=properties)

        def answered() -> Any:
            with self._lock:
                return next(((json.loads(p), props) for t, p, props in self.messages
                             if t == response_topic), None)

        return self.wait(answered)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Subscriber:
    """A QoS 1 subscriber with a persistent session, so that the broker queues for it while
    it is away (with `persistent_broker`, its queue survives a broker restart). Keeps every
    payload (JSON), and in `redelivered` beside it whether the broker sent it again itself (the
    MQTT DUP flag: its own at-least-once delivery to us, after a broker restart; no publisher
    can mark those). `key` names the field that identifies one message."""

    def __init__(self, port: int, topic: str, key: str = "i",
                 client_id: str = "persistent-sub",
                 login: tuple[str, str] | None = None) -> None:
        self.key = key
        self.payloads: list[dict] = []
        self.redelivered: list[bool] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=client_id, protocol=mqtt.MQTTv311,
                                  clean_session=False)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self._ready.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)
        if login is not None:
            self.client.username_pw_set(*login)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self._ready.wait(10)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.payloads.append(json.loads(message.payload))
            self.redelivered.append(bool(message.dup))

    def keys(self) -> set[Any]:
        with self._lock:
            return {p[self.key] for p in self.payloads}

    def wait_for(self, count: int, timeout_s: float = 20.0) -> set[Any]:
        """The distinct keys seen, once there are `count` of them (or time ran out)."""
        deadline = time.monotonic() + timeout_s
        while len(self.keys()) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.keys()

    def settled(self, quiet_s: float = 0.5, timeout_s: float = 20.0) -> set[Any]:
        """The distinct keys seen, once nothing more came for `quiet_s`."""
        deadline = time.monotonic() + timeout_s
        seen = -1
        while time.monotonic() < deadline:
            with self._lock:
                count = len(self.payloads)
            if count == seen and count:
                break
            seen = count
            time.sleep(quiet_s)
        return self.keys()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def retained(port: int, topic: str, device: str = DEVICE) -> str:
    """The retained message on `mlink/<device>/<topic>`, read by the real mosquitto_sub."""
    return subprocess.run(["mosquitto_sub", "-p", str(port), "-t", f"mlink/{device}/{topic}",
                           "-C", "1", "-W", "20"], capture_output=True, text=True,
                          check=True).stdout.strip()


def outbox_depth(path: Path) -> int:
    """Rows in an agent's outbox, read beside the running agent (SQLite WAL allows it)."""
    box = Outbox(path)
    try:
        return box.depth
    finally:
        box.close()
