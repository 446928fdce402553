"""Moved to agent/transport/ (topics, MQTT client, outbox sender); kept for agent/control
until it imports from there."""

from agent.transport import POSSIBLE_DUPLICATE, Publisher, PublishError, Topics, dumps

__all__ = ["POSSIBLE_DUPLICATE", "PublishError", "Publisher", "Topics", "dumps"]
