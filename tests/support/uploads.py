"""Uploads published the way a box publishes them (/work/notes/relink-contract.md, the box's
`cmd/upload`; docs/mqtt.md "Uploads and relinking"), for the relinking worker's tests while
the agent side is built apart: the recording's .npz in retained chunks, then the retained
manifest, then the job on `<prefix>/fleet/relink`.

`window_rows` makes the rows a box's profiling windows keep: every model's exact output on
frames of the city stream, sampled over a stretch of the day (the models' own .tflite files
through LiteRT, as on the box)."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt

from links_tflite.bundle import identity, load_bundle
from links_tflite.recording import Recording


def window_rows(build_root: Path, seed: int, hour: float, rows: int, stride: int,
                cameras: int = 4) -> Recording:
    """`rows` frames of the city stream (seed `seed`) from `hour`, every `stride`-th, with
    the exact outputs of the bundle's models."""
    from agent.sources.city import SITES, CityGenerator, start_index
    from links_tflite.interpreter import TFLiteRunner

    tasks = load_bundle(build_root / "bundle").models
    indices = start_index(0, hour, cameras) + np.arange(rows) * stride
    images, _truth, ts, camera_ids = CityGenerator(seed, cameras).batch(indices)
    outputs = {m: np.asarray(TFLiteRunner(build_root / "models" / f"{m}.tflite")(images),
                             np.float32) for m in tasks}
    return Recording(workload="city", frame_ids=indices.astype(np.int64), ts=ts,
                     tasks=dict(tasks), outputs=outputs, camera_ids=camera_ids,
                     cameras=[site.name for site in SITES[:cameras]])


def upload_bytes(recording: Recording, folder: Path) -> bytes:
    path = recording.save(folder / f"upload-{secrets.token_hex(4)}.npz")
    data = path.read_bytes()
    path.unlink()
    return data


def manifest(data: bytes, device: str, groups: list[str], rows: int, chunk_bytes: int,
             reason: str = "request", upload: str | None = None,
             bundle: Path | None = None) -> dict[str, Any]:
    """The box's manifest (agent/schemas/upload.json) of an upload of `data`; `bundle`: the
    bundle in force it names (`links_tflite.bundle.identity`)."""
    named = identity(load_bundle(bundle)) if bundle is not None else {
        "name": "bundle", "version": "0" * 16}
    return {"upload": upload or f"{int(time.time())}-{secrets.token_hex(2)}", "device": device,
            "groups": groups, "bundle": named, "rows": rows,
            "chunks": max(1, -(-len(data) // chunk_bytes)), "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "reason": reason, "ts": time.time()}


def publish_upload(port: int, data: bytes, body: dict[str, Any], chunk_bytes: int,
                   prefix: str = "mlink", chunks: list[bytes] | None = None) -> None:
    """Chunks (retained), the manifest (retained), the job: QoS 1, in that order. `chunks`
    replaces the slices of `data` (a test's tampered upload)."""
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                         protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        root = f"{prefix}/{body['device']}/uploads/{body['upload']}"
        parts = chunks if chunks is not None else [
            data[i:i + chunk_bytes] for i in range(0, len(data), chunk_bytes)]
        infos = [client.publish(f"{root}/{n}", part, qos=1, retain=True)
                 for n, part in enumerate(parts)]
        infos.append(client.publish(root, json.dumps(body), qos=1, retain=True))
        infos.append(client.publish(f"{prefix}/fleet/relink", json.dumps(body), qos=1))
        for info in infos:
            info.wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def retained(port: int, topic_filter: str, wait_s: float = 1.0) -> dict[str, bytes]:
    """The retained messages under a filter (non-empty ones), as the broker holds them."""
    seen: dict[str, bytes] = {}
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                         protocol=mqtt.MQTTv5)
    client.on_message = lambda _c, _u, m: seen.__setitem__(m.topic, bytes(m.payload))
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.subscribe(topic_filter, qos=1)
    time.sleep(wait_s)
    client.disconnect()
    client.loop_stop()
    return {t: p for t, p in seen.items() if p}


def listen_to_results(port: int, results: list[dict]) -> mqtt.Client:
    """A client on the local broker appending every relinking result to `results`; the
    caller disconnects it and stops its loop."""
    listener = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                           protocol=mqtt.MQTTv5)
    listener.on_message = lambda _c, _u, m: results.append(json.loads(m.payload))
    listener.connect("127.0.0.1", port)
    listener.loop_start()
    listener.subscribe("mlink/fleet/relink/results", qos=1)
    return listener
