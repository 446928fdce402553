"""Input sources: where frames come from. Small classes behind one interface, registered by
name and chosen by `[source] type` in the config."""

from __future__ import annotations

from typing import Any

from agent.sources.base import Frame, Source
from agent.sources.city import CitySource
from agent.sources.digits import DigitsSource
from agent.sources.images import ImagesSource
from agent.sources.replay import ReplaySource

SOURCES: dict[str, type[Source]] = {
    s.type: s for s in (ReplaySource, CitySource, DigitsSource, ImagesSource)
}


def open_source(config: Any) -> Source:
    return SOURCES[config.type](config)


__all__ = ["SOURCES", "Frame", "Source", "open_source"]
