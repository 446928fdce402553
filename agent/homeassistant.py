"""Home Assistant MQTT discovery (off by default; `[publish] home_assistant = true`).

One retained device discovery message (`<discovery_prefix>/device/<device_id>/config`,
Home Assistant 2024.11+) makes every model on every camera a sensor reading that model's entry
of the camera's frame messages (`frames/<camera>`) with a `value_template`, its fields as
attributes (zigbee2mqtt's convention: one state message, attributes inside), plus the box's
frames per second. A frame message without the model (not published on that frame) leaves the
sensor as it was. Turning discovery off publishes an empty retained message, which removes the
device from Home Assistant.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from agent.config import AgentConfig
from agent.sources import SOURCES
from agent.transport import Topics


def value_template(model: str) -> str:
    """The model's value read for a person from a frame message: its `decoded` (a name, a
    number, words), else its first number; the state unchanged where the frame has no
    entry for it, `withheld` where its value was withheld."""
    return ("{% set o = value_json.outputs['" + model + "'] if '" + model + "' in "
            "value_json.outputs else none %}"
            "{% if o is none %}{{ this.state }}"
            "{% elif o.value is none %}withheld"
            "{% else %}{% set d = o.decoded | default(none) %}"
            "{% if d is mapping %}{{ d.name | default(d.value | default(o.value[0])) }}"
            "{% elif d is not none %}{{ d }}{% else %}{{ o.value[0] }}{% endif %}{% endif %}")


def attributes_template(model: str) -> str:
    return ("{{ (value_json.outputs['" + model + "'] if '" + model + "' in value_json.outputs "
            "else {}) | tojson }}")


def camera_names(config: AgentConfig) -> tuple[str, ...]:
    """The cameras' names as the sources will give them: from the source's config where its
    `cameras` reads only that, else from the source opened for the moment (a replay)."""
    configs = [config.source] if config.source is not None else list(config.sources)
    names: list[str] = []
    for source in configs:
        cameras: Any = SOURCES[source.type].cameras  # the property itself
        try:
            names.extend(cameras.fget(SimpleNamespace(config=source)))
        except AttributeError:  # it reads what the source opened (a recording's cameras)
            opened = SOURCES[source.type](source)
            try:
                names.extend(opened.cameras)
            finally:
                opened.close()
    return tuple(names)


def discovery_topic(config: AgentConfig) -> str:
    return f"{config.publish.discovery_prefix}/device/{config.device_id}/config"


def discovery_payload(config: AgentConfig, cameras: Sequence[str] | None = None
                      ) -> dict[str, Any]:
    topics = Topics(config.mqtt.prefix, config.device_id)
    cameras = tuple(cameras) if cameras is not None else camera_names(config)
    device = config.device_id
    components: dict[str, dict[str, Any]] = {}
    for camera in cameras:
        for model in config.enabled_models:
            key = f"{device}_{model.id}" if len(cameras) == 1 else f"{device}_{camera}_{model.id}"
            components[key] = {
                "platform": "sensor",
                "name": model.id if len(cameras) == 1 else f"{model.id} {camera}",
                "unique_id": f"mlink_{key}",
                "state_topic": topics.frames(camera),
                "value_template": value_template(model.id),
                "json_attributes_topic": topics.frames(camera),
                "json_attributes_template": attributes_template(model.id),
            }
    components[f"{device}_fps"] = {
        "platform": "sensor",
        "name": "frames per second",
        "unique_id": f"mlink_{device}_fps",
        "state_topic": topics.status,
        "value_template": "{{ value_json.fps }}",
        "unit_of_measurement": "fps",
        "state_class": "measurement",
    }
    return {
        "device": {"identifiers": [f"mlink_{device}"],
                   "name": f"MLink {device}", "manufacturer": "MLink Edge"},
        "origin": {"name": "mlink-edge"},
        "availability_topic": topics.availability,
        "availability_template": "{{ 'online' if value == 'online' else 'offline' }}",
        "components": components,
        "qos": 1,
    }
