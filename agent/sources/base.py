"""The source interface: frames in stream order, each with its modalities."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from agent.registry import Registry


@dataclass(frozen=True)
class Frame:
    frame_id: int
    ts: float
    modalities: dict[str, np.ndarray]
    camera: int = 0
    # What the generator knows (workload sources only): used to score and to test drift.
    ground_truth: dict[str, np.ndarray] = field(default_factory=dict)


class Source:
    """Yields frames in stream order; `modalities` names what each frame carries. A source is
    one file in agent/sources/: the class, registered in SOURCES under `type`, and its config
    class (`config_class`, with `type: Literal[<its type>]`)."""

    type: ClassVar[str]
    config_class: ClassVar[Any]  # a pydantic model with `type: Literal[<type>]`
    modalities: tuple[str, ...] = ()

    def __init__(self, config: Any) -> None:
        self.config = config

    def frames(self) -> Iterator[Frame]:
        raise NotImplementedError


def paced(frames: Iterator[Frame], fps: float) -> Iterator[Frame]:
    """Yield frames no faster than `fps` (0 = as fast as they come)."""
    if fps <= 0:
        yield from frames
        return
    period = 1.0 / fps
    next_due = time.monotonic()
    for frame in frames:
        delay = next_due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        next_due = max(next_due + period, time.monotonic() - period)
        yield frame


SOURCES: Registry[type[Source]] = Registry("source", key="type", package="agent.sources")
