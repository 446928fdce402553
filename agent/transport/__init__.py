"""MQTT transport, in three parts: the topics (built and parsed in one place,
`topics.py`), the client (`mqtt.py`: connect, TLS, login, reconnects, PUBACK reason codes),
the outbox sender (`sender.py`: batching, back-pressure, retries) over the durable outbox
(`outbox.py`); `Publisher` (`publisher.py`) puts them together for the agent."""

from agent.transport.mqtt import PublishError, dumps, try_connect
from agent.transport.outbox import Outbox
from agent.transport.publisher import Publisher
from agent.transport.sender import HOLD_AT, POSSIBLE_DUPLICATE, STAGED_MAX
from agent.transport.topics import TopicRef, Topics, parse

__all__ = ["HOLD_AT", "POSSIBLE_DUPLICATE", "STAGED_MAX", "Outbox", "PublishError",
           "Publisher", "TopicRef", "Topics", "dumps", "parse", "try_connect"]
