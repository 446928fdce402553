"""Uploads of a box's profiling windows' rows through a real Mosquitto: a real agent process
(the committed fixture's TFLite models, TensorFlow refused) answers `cmd/upload`; a plain
paho client collects the retained chunks and manifest as a trainer would, joins them, checks
the sha256, and reads a recording of the bundle's tasks with the rows the manifest says. A
second upload clears the first, so the broker holds one upload per box; a malformed request
is refused with nothing published; a group's request is answered by each box."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from agent.transport.topics import parse
from devtools.broker import LocalBroker
from links_tflite.bundle import identity, load_bundle
from links_tflite.recording import Recording
from tests.support.agent_process import AgentProcess, Client
from tests.support.contract import validate

DEVICE = "box-1"
MODELS = ("digit", "parity", "inkbox")


@pytest.fixture()
def broker():
    with LocalBroker() as running:
        yield running


def agent_config(fixture: Path, folder: Path, port: int) -> Path:
    """Windows back to back (a window of 50 frames after each frame outside one), at 100
    frames a second: rows within a second of the start; a status every second (a test waits
    for one that counts them). (The stream's 60 frames loop, so the rows compress into one
    16 KiB chunk: tests/agent/test_uploads.py joins several.)"""
    models = "".join(f'[[models]]\nid = "{m}"\npath = "{fixture / "models" / (m + ".tflite")}"\n'
                     'input = "image"\n' for m in MODELS)
    path = folder / "agent.toml"
    path.write_text(
        f'device_id = "{DEVICE}"\n[mqtt]\nport = {port}\nstatus_every_s = 1\n'
        f'[bundle]\npath = "{fixture / "bundle"}"\n'
        f'[source]\ntype = "replay"\npath = "{fixture / "stream.npz"}"\nfps = 100\nloop = true\n'
        '[selection]\npolicy = "exact"\n[budget]\nmemory_mb = 1000\n'
        '[profiling]\nwarmup_runs = 1\ndelay_runs = 3\nperiod_frames = 1\nsample_frames = 50\n'
        f'[state]\ndir = "{folder / "state"}"\n'
        '[fleet]\ngroups = ["site"]\nwindow_rows = 100\nupload_chunk_kb = 16\n' + models)
    return path


class Collector:
    """A plain paho subscriber that keeps what it gets on some filters (retained ones too)."""

    def __init__(self, port: int, *filters: str) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        ready = threading.Event()
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"trainer-{uuid.uuid4().hex[:8]}")
        self.client.on_connect = lambda c, *_: c.subscribe([(f, 1) for f in filters])
        self.client.on_subscribe = lambda *_: ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert ready.wait(10)

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((message.topic, bytes(message.payload), bool(message.retain)))

    def settled(self, quiet_s: float = 0.3) -> list[tuple[str, bytes, bool]]:
        """Everything received once nothing more came for `quiet_s`."""
        seen = -1
        while True:
            with self._lock:
                now = len(self.messages)
            if now == seen:
                return list(self.messages)
            seen = now
            time.sleep(quiet_s)

    def job(self, upload: str, timeout_s: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                for topic, payload, _ in self.messages:
                    if topic.endswith("/fleet/relink") and json.loads(payload)["upload"] == upload:
                        return json.loads(payload)
            time.sleep(0.05)
        raise TimeoutError(f"no job for upload {upload}")

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def collect(port: int, manifest: dict[str, Any]) -> bytes:
    """What a trainer does on a job: the upload's retained chunks, joined in order."""
    root = f"mlink/{manifest['device']}/uploads/{manifest['upload']}"
    trainer = Collector(port, f"{root}/+", root)
    try:
        messages = trainer.settled()
    finally:
        trainer.stop()
    assert all(retained for _, _, retained in messages)
    parts = {}
    for topic, payload, _ in messages:
        ref = parse(topic, "mlink")
        assert ref is not None and ref.name == manifest["upload"]
        if ref.kind == "upload":
            assert json.loads(payload) == manifest
        else:
            assert ref.kind == "upload_chunk" and len(payload) <= 16 * 1024
            parts[ref.part] = payload
    assert sorted(parts) == list(range(manifest["chunks"]))
    return b"".join(parts[n] for n in range(manifest["chunks"]))


def test_an_upload_through_the_broker_is_the_box_s_recording(digits_fixture, broker,
                                                             tmp_path: Path) -> None:
    agent = AgentProcess(agent_config(digits_fixture.root, tmp_path, broker.port),
                         log_file=tmp_path / "agent.log")
    client = Client(broker.port, device=DEVICE)
    jobs = Collector(broker.port, "mlink/fleet/relink")
    try:
        client.latest("status", lambda s: s["state"] == "running")  # requests are read
        for attempt in range(200):  # refused until a window has ended
            response = client.request("cmd/upload", {"transaction": f"u1-{attempt}",
                                                     "reason": "test"})
            validate("command-response", response)
            if response["status"] == "ok":
                break
            assert "no profiling window rows" in response["errors"][0]["message"], response
            time.sleep(0.1)
        assert response["status"] == "ok", response
        result = response["result"]
        manifest = jobs.job(result["upload"])
        validate("upload", manifest)
        assert {k: manifest[k] for k in result} == result
        bundle = load_bundle(digits_fixture.bundle)
        assert manifest["bundle"] == identity(bundle) and manifest["groups"] == ["site"]
        assert manifest["device"] == DEVICE and manifest["reason"] == "test"
        data = collect(broker.port, manifest)
        assert len(data) == manifest["size"]
        assert hashlib.sha256(data).hexdigest() == manifest["sha256"]
        (tmp_path / "upload.npz").write_bytes(data)
        recording = Recording.load(tmp_path / "upload.npz")
        assert recording.tasks == {m: bundle.models[m] for m in MODELS}
        assert 50 <= len(recording) == manifest["rows"] <= 100  # whole windows of 50

        # refused, nothing published: a key cmd/upload does not take, a bad reason
        for body, path in (({"transaction": "u2", "nope": 1}, "nope"),
                           ({"transaction": "u3", "reason": "x" * 65}, "reason")):
            refused = client.request("cmd/upload", body)
            assert refused["status"] == "error" and refused["errors"][0]["path"] == path

        # the second, asked of the box's group: answered on the box's own response topic
        client.client.publish("mlink/groups/site/cmd/upload", json.dumps({"transaction": "u4"}),
                              qos=1)
        second = client.latest("cmd/upload/response",
                               lambda r: r["transaction"] == "u4")["result"]
        assert jobs.job(second["upload"])["reason"] == "request"
        assert len([t for t, _, _ in jobs.settled()]) == 2  # one job per upload
        # the broker holds the second upload only: the first was cleared
        held = Collector(broker.port, f"mlink/{DEVICE}/uploads/#")
        try:
            names = {parse(t, "mlink").name for t, _, _ in held.settled()}  # type: ignore[union-attr]
        finally:
            held.stop()
        assert names == {second["upload"]}
        status = client.latest("status", lambda s: s["fleet"]["windows"]["uploads"] == 2)
        validate("status", status)
        assert status["fleet"]["windows"]["last_upload"]["id"] == second["upload"]
        assert status["fleet"]["windows"]["uploads_refused"] == attempt  # none kept yet
    finally:
        jobs.stop()
        client.stop()
        code, log = agent.stop()
    assert code == 0, log[-3000:]
