"""Input sources: where frames come from. Small classes behind one interface, one file each in
this package, registered by name (agent.registry) and chosen by `[source] type` in the config
(or one `[[sources]]` table per camera, read together by agent.sources.many); each carries its
config class, from which the config's `[source]` choices are derived."""

from __future__ import annotations

from typing import Any

from agent.sources.base import SOURCES, Frame, Source
from agent.sources.many import ManySources, open_many


def open_source(config: Any, broker: Any = None) -> Source:
    """The source of one `[source]`/`[[sources]]` table. A source that reads the broker
    (`needs_broker`, e.g. `mqtt`) is given `broker`: the agent's connection."""
    cls: Any = SOURCES[config.type]  # a broker reader takes (config, broker)
    if not cls.needs_broker:
        return cls(config)
    if broker is None:
        raise ValueError(f"a {config.type!r} source reads the agent's broker connection")
    return cls(config, broker)


def open_sources(config: Any, broker: Any = None) -> Source:
    """The agent config's `[source]`, or its `[[sources]]` read together. Sources that read
    the broker are given `broker` (the service's connection); without one (`record`,
    `select`), each gets a connection of its own that subscribes only (`Inbox`)."""

    def open_one(source_config: Any) -> Source:
        if broker is not None or not SOURCES[source_config.type].needs_broker:
            return open_source(source_config, broker)
        from agent.sources.mqtt import Inbox

        inbox = Inbox(config.mqtt, config.device_id)
        reader: Any = SOURCES[source_config.type]
        try:
            return reader(source_config, inbox, owned=inbox)
        except BaseException:
            inbox.close()
            raise

    if config.source is not None:
        return open_one(config.source)
    return open_many(list(config.sources), open_one)


__all__ = ["SOURCES", "Frame", "ManySources", "Source", "open_source", "open_sources"]
