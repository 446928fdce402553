"""Input sources: where frames come from. Small classes behind one interface, registered by
name and chosen by `[source] type` in the config (or one `[[sources]]` table per camera)."""

from __future__ import annotations

from typing import Any

from agent.sources.base import Frame, Source
from agent.sources.camera import CameraSource
from agent.sources.city import CitySource
from agent.sources.digits import DigitsSource
from agent.sources.images import ImagesSource
from agent.sources.jsonl import JsonlSource
from agent.sources.lines import LinesSource
from agent.sources.many import ManySources, open_many
from agent.sources.replay import ReplaySource
from agent.sources.video import VideoSource

SOURCES: dict[str, type[Source]] = {
    s.type: s for s in (ReplaySource, CitySource, DigitsSource, ImagesSource, VideoSource,
                        CameraSource, LinesSource, JsonlSource)
}


def open_source(config: Any) -> Source:
    return SOURCES[config.type](config)


def open_sources(config: Any) -> Source:
    """The agent config's `[source]`, or its `[[sources]]` read together."""
    if config.source is not None:
        return open_source(config.source)
    return open_many(list(config.sources), open_source)


__all__ = ["SOURCES", "Frame", "ManySources", "Source", "open_source", "open_sources"]
