"""Input sources: where frames come from. Small classes behind one interface, one file each in
this package, registered by name (agent.registry) and chosen by `[source] type` in the config;
each carries its config class, from which the config's `[source]` choices are derived."""

from __future__ import annotations

from typing import Any

from agent.sources.base import SOURCES, Frame, Source


def open_source(config: Any) -> Source:
    return SOURCES[config.type](config)


__all__ = ["SOURCES", "Frame", "Source", "open_source"]
