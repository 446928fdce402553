"""The `mqtt` source: records arriving on a topic of a real Mosquitto become frames, bounded and
validated on arrival (what is not a record is counted, not a frame), the newest winning when
the loop falls behind; and end to end through the agent's own broker connection, with the
committed fixture's TFLite models (tests/data/digits3): no TensorFlow."""

from __future__ import annotations

import io
import itertools
import json
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from agent.config import load_config, validate
from agent.sources import open_sources
from agent.sources.mqtt import MqttSource
from devtools.broker import LocalBroker
from links_tflite.recording import Recording

pytestmark = pytest.mark.broker


@pytest.fixture()
def broker():
    with LocalBroker() as running:
        yield running


def publisher(port: int) -> mqtt.Client:
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                         client_id="feeder")
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def send(client: mqtt.Client, topic: str, payloads: list[bytes]) -> None:
    for payload in payloads:
        client.publish(topic, payload, qos=1).wait_for_publish(5)


def source_config(tmp_path: Path, port: int, **fields) -> object:
    data = {"device_id": "t", "bundle": {"path": "b"}, "mqtt": {"port": port},
            "source": {"type": "mqtt", "id": "feed", **fields},
            "models": [{"id": "m", "adapter": "python",
                        "entry": "tests.support.text_models:bulk",
                        "input": fields.get("modality", "record")}]}
    return validate(data, tmp_path)


def wait_for(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_json_records_become_frames_and_the_rest_is_counted(broker, tmp_path: Path) -> None:
    source = open_sources(source_config(tmp_path, broker.port, topic="orders/+",
                                        max_payload_bytes=256))
    assert isinstance(source, MqttSource) and source.modalities == ("record",)
    feeder = publisher(broker.port)
    try:
        wait_for(lambda: source._owned is not None and source._owned._client.is_connected())
        time.sleep(0.2)  # the subscription is made on connect
        send(feeder, "orders/a", [
            b'{"qty": 3}',
            b'{"qty": NaN}',                    # not finite: malformed
            b"[1, 2]",                          # not an object: malformed
            b'{"pad": "' + b"x" * 300 + b'"}',  # too large: refused on arrival
            b"\xff\xfe",                        # not UTF-8: malformed
            b'{"qty": 5, "note": "last"}',
        ])
        frames = list(itertools.islice(source.frames(), 2))
    finally:
        feeder.loop_stop()
        source.close()
    assert [f.modalities["record"] for f in frames] == [{"qty": 3},
                                                         {"qty": 5, "note": "last"}]
    assert [f.frame_id for f in frames] == [0, 1]
    assert source.stats() == {"feed": {"received": 6, "records": 2, "too_large": 1,
                                       "malformed": 3, "dropped": 0}}


def test_the_newest_records_win_when_the_loop_falls_behind(broker, tmp_path: Path) -> None:
    source = open_sources(source_config(tmp_path, broker.port, topic="t", queue=3,
                                        format="text", modality="text"))
    feeder = publisher(broker.port)
    try:
        wait_for(lambda: source._owned._client.is_connected())
        time.sleep(0.2)
        send(feeder, "t", [f"line {i}".encode() for i in range(10)])
        wait_for(lambda: source.stats()["feed"]["received"] == 10)
        texts = [f.modalities["text"] for f in itertools.islice(source.frames(), 3)]
    finally:
        feeder.loop_stop()
        source.close()
    assert texts == ["line 7", "line 8", "line 9"]
    assert source.stats()["feed"]["dropped"] == 7


def test_images_are_decoded_and_bounded(broker, tmp_path: Path) -> None:
    from PIL import Image

    def png(width: int, height: int, shade: int) -> bytes:
        out = io.BytesIO()
        Image.new("L", (width, height), shade).save(out, format="PNG")
        return out.getvalue()

    source = open_sources(source_config(tmp_path, broker.port, topic="cam", format="image",
                                        modality="image", grayscale=True, size=[4, 6],
                                        max_pixels=64 * 64))
    feeder = publisher(broker.port)
    try:
        wait_for(lambda: source._owned._client.is_connected())
        time.sleep(0.2)
        send(feeder, "cam", [png(10, 8, 255), png(100, 100, 0), b"not an image",
                             png(8, 8, 51)])
        frames = list(itertools.islice(source.frames(), 2))
    finally:
        feeder.loop_stop()
        source.close()
    assert [f.modalities["image"].shape for f in frames] == [(4, 6), (4, 6)]
    assert np.allclose(frames[0].modalities["image"], 1.0)
    assert np.allclose(frames[1].modalities["image"], 0.2)
    assert source.stats()["feed"]["malformed"] == 2  # too many pixels; not an image


def test_a_topic_filter_is_validated(tmp_path: Path) -> None:
    from agent.config import ConfigError

    for bad in ("a/#/b", "a+/b", "x" * 300):
        with pytest.raises(ConfigError, match=r"source\.mqtt\.topic"):
            source_config(tmp_path, 1883, topic=bad)


def test_the_agent_reads_frames_through_its_own_connection(broker, digits_fixture,
                                                           tmp_path: Path) -> None:
    """npy frames published to the agent's broker are run by the fixture's TFLite models
    exactly as the replayed stream is: the agent's connection delivers them, in order."""
    from agent.output import model_entries
    from agent.scheduler import Agent
    from agent.transport import Publisher

    root = digits_fixture.root
    config_path = tmp_path / "agent.toml"
    config_path.write_text(
        f'device_id = "box"\n[mqtt]\nport = {broker.port}\n'
        f'[bundle]\npath = "{root / "bundle"}"\n'
        '[source]\ntype = "mqtt"\nid = "feed"\ntopic = "feed/frames"\nformat = "npy"\n'
        'modality = "image"\n[selection]\npolicy = "all"\n'
        "[profiling]\nwarmup_runs = 1\ndelay_runs = 3\nperiod_frames = 0\n"
        + "".join(f'[[models]]\nid = "{m}"\npath = "{root / "models" / (m + ".tflite")}"\n'
                  'input = "image"\n' for m in ("digit", "parity", "inkbox")))
    config = load_config(config_path)
    stream = Recording.load(root / "stream.npz")
    link = Publisher(config.mqtt, config.device_id)
    link.connect()
    agent = Agent.from_config(config, link)
    feeder = publisher(broker.port)
    try:
        time.sleep(0.3)  # the source's subscription is made through the agent's connection

        def npy(row: int) -> bytes:
            out = io.BytesIO()
            np.save(out, stream.inputs["image"][row], allow_pickle=False)
            return out.getvalue()

        send(feeder, "feed/frames", [npy(row) for row in range(12)])
        frames = agent.start()
        payloads = [p for frame in itertools.islice(frames, 12)
                    for p in model_entries(agent.process(frame))]
        status = agent.status("running")
    finally:
        feeder.loop_stop()
        agent.close()
        link.close(timeout_s=2)
    by_model: dict[str, list[list[float]]] = {}
    for payload in payloads:
        assert payload["provenance"] == "executed" and payload["camera"] == "feed"
        by_model.setdefault(str(payload["model"]), []).append(payload["value"])
    for model_id, values in by_model.items():
        assert np.allclose(values, stream.outputs[model_id][:12], atol=1e-5), model_id
    assert status["sources"]["feed"]["records"] == 12
    assert json.dumps(status)  # the source's counters are in the status as they are
