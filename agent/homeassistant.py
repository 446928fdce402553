"""Home Assistant MQTT discovery (off by default; `[publish] home_assistant = true`).

One retained device discovery message (`<discovery_prefix>/device/<device_id>/config`,
Home Assistant 2024.11+) makes every model a sensor showing its latest output read for a
person, with the output's fields as attributes, plus the box's frames per second. Turning it
off publishes an empty retained message, which removes the device from Home Assistant.
"""

from __future__ import annotations

from typing import Any

from agent.config import AgentConfig
from agent.transport import Topics

VALUE = ("{% set d = value_json.decoded | default({}) %}"
         "{{ d.name | default(d.value | default(value_json.value[0])) }}")


def discovery_topic(config: AgentConfig) -> str:
    return f"{config.publish.discovery_prefix}/device/{config.device_id}/config"


def discovery_payload(config: AgentConfig) -> dict[str, Any]:
    topics = Topics(config.mqtt.prefix, config.device_id)
    components: dict[str, dict[str, Any]] = {
        f"{config.device_id}_{model.id}": {
            "platform": "sensor",
            "name": model.id,
            "unique_id": f"mlink_{config.device_id}_{model.id}",
            "state_topic": topics.output(model.id),
            "value_template": VALUE,
            "json_attributes_topic": topics.output(model.id),
        }
        for model in config.enabled_models
    }
    components[f"{config.device_id}_fps"] = {
        "platform": "sensor",
        "name": "frames per second",
        "unique_id": f"mlink_{config.device_id}_fps",
        "state_topic": topics.status,
        "value_template": "{{ value_json.fps }}",
        "unit_of_measurement": "fps",
        "state_class": "measurement",
    }
    return {
        "device": {"identifiers": [f"mlink_{config.device_id}"],
                   "name": f"MLink {config.device_id}", "manufacturer": "MLink Edge"},
        "origin": {"name": "mlink-edge"},
        "availability_topic": topics.availability,
        "availability_template": "{{ 'online' if value == 'online' else 'offline' }}",
        "components": components,
        "qos": 1,
    }
