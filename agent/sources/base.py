"""The source interface: frames in stream order, each with its modalities.

A modality's value is what the models reading it take: an array for images and tensors, a
`str` for a text line, a `dict` for a JSON record. `camera` is the index of the camera (or
feed) in `Source.cameras`, which names them; `ts` is the wall clock (or, for the generated
workloads and replays, the stream's own clock) and `stream_ts` the stream's timestamp where
the stream has one (a video's presentation time), else None."""

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
    modalities: dict[str, Any]
    camera: int = 0
    # What the generator knows (workload sources only): used to score and to test drift.
    ground_truth: dict[str, np.ndarray] = field(default_factory=dict)
    stream_ts: float | None = None


class Source:
    """Yields frames in stream order; `modalities` names what each frame carries. A source is
    one file in agent/sources/: the class, registered in SOURCES under `type`, and its config
    class (`config_class`, with `type: Literal[<its type>]`)."""

    type: ClassVar[str]
    config_class: ClassVar[Any]  # a pydantic model with `type: Literal[<type>]`
    modalities: tuple[str, ...] = ()
    needs_broker: ClassVar[bool] = False  # constructed with the agent's broker connection

    def __init__(self, config: Any) -> None:
        self.config = config

    @property
    def cameras(self) -> tuple[str, ...]:
        """The names of the cameras (feeds) whose index a frame's `camera` is."""
        return (getattr(self.config, "id", None) or "0",)

    def frames(self) -> Iterator[Frame]:
        raise NotImplementedError

    def stats(self) -> dict[str, dict[str, int]]:
        """Per camera name, what the source counted (frames dropped, reconnections,
        malformed records...); empty where it counts nothing."""
        return {}

    def close(self) -> None:
        """Release what the source holds open (threads, devices, connections)."""


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
