"""Home Assistant discovery: one sensor per model and camera, reading the camera's frame
messages."""

from __future__ import annotations

from pathlib import Path

from agent.config import load_config
from agent.homeassistant import camera_names, discovery_payload

CONFIG = """
device_id = "box-1"
[bundle]
path = "bundle"
[[sources]]
id = "north"
type = "city"
cameras = 2
[[sources]]
id = "gate"
type = "lines"
path = "feed.txt"
[[models]]
id = "persons"
path = "models/persons.tflite"
input = "image"
[[models]]
id = "traffic"
path = "models/traffic.tflite"
input = "image"
"""


def test_one_sensor_per_model_and_camera_on_its_frames_topic(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(CONFIG)
    config = load_config(path)
    cameras = camera_names(config)
    assert cameras == ("north-downtown", "north-ring-road", "gate")  # as the sources name them
    sensors = [c for c in discovery_payload(config)["components"].values()
               if c["name"] != "frames per second"]
    assert len(sensors) == 2 * len(cameras)
    for sensor in sensors:
        model, camera = sensor["name"].split(" ", 1)
        assert sensor["state_topic"] == f"mlink/box-1/frames/{camera}"
        assert f"value_json.outputs['{model}']" in sensor["value_template"]
        assert sensor["json_attributes_topic"] == sensor["state_topic"]
    assert len({s["unique_id"] for s in sensors}) == len(sensors)
