"""The transport's door for the agent (agent/transport/publisher.py): what is not sent is
counted."""

from __future__ import annotations

from agent.config import MqttConfig
from agent.transport import Publisher


def test_a_qos0_message_while_the_broker_is_away_is_counted_not_queued() -> None:
    publisher = Publisher(MqttConfig(port=1), "box")  # never connected
    publisher.publish_now(publisher.topics.output("digit"), {"value": [1.0]})
    assert publisher.qos0_unsent == 1 and publisher.pending == 0
    assert publisher.health()["qos0_unsent"] == 1
