"""Input sources: where frames come from. Small classes behind one interface, one file each in
this package, registered by name (agent.registry) and chosen by `[source] type` in the config
(or one `[[sources]]` table per camera, read together by agent.sources.many); each carries its
config class, from which the config's `[source]` choices are derived."""

from __future__ import annotations

from typing import Any

from agent.sources.base import SOURCES, Frame, Source
from agent.sources.many import ManySources, open_many


def open_source(config: Any) -> Source:
    return SOURCES[config.type](config)


def open_sources(config: Any) -> Source:
    """The agent config's `[source]`, or its `[[sources]]` read together."""
    if config.source is not None:
        return open_source(config.source)
    return open_many(list(config.sources), open_source)


__all__ = ["SOURCES", "Frame", "ManySources", "Source", "open_source", "open_sources"]
