"""Input sources: where frames come from. Small classes behind one interface, registered
by name and chosen by `[source] type` in the config."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from agent.config import SourceConfig
from links_tflite.recording import Recording

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Frame:
    frame_id: int
    ts: float
    modalities: dict[str, np.ndarray]


class Source:
    """Yields frames in stream order; `modalities` names what each frame carries."""

    type: ClassVar[str]
    modalities: tuple[str, ...] = ()

    def frames(self) -> Iterator[Frame]:
        raise NotImplementedError


class ReplaySource(Source):
    """Replays the frames stored in a recording (its `inputs/*` arrays), optionally paced."""

    type: ClassVar[str] = "replay"

    def __init__(self, config: SourceConfig) -> None:
        self.config = config
        self.recording = Recording.load(config.path)
        if not self.recording.inputs:
            raise ValueError(f"{config.path}: the recording holds no frames (no inputs/* arrays)")
        self.modalities = tuple(sorted(self.recording.inputs))

    def frames(self) -> Iterator[Frame]:
        period = 1.0 / self.config.fps if self.config.fps > 0 else 0.0
        rec = self.recording
        next_due = time.monotonic()
        while True:
            for row in range(len(rec)):
                if period:
                    delay = next_due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    next_due += period
                yield Frame(
                    frame_id=int(rec.frame_ids[row]),
                    ts=float(rec.ts[row]),
                    modalities={name: values[row] for name, values in rec.inputs.items()},
                )
            if not self.config.loop:
                return


SOURCES: dict[str, type[Source]] = {ReplaySource.type: ReplaySource}


def open_source(config: SourceConfig) -> Source:
    return SOURCES[config.type](config)
