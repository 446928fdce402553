"""Replays the frames stored in a recording (its `inputs/*` arrays)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, Literal

from agent.configbase import Paced
from agent.sources.base import SOURCES, Frame, Source, paced
from links_tflite.recording import Recording


class ReplaySourceConfig(Paced):
    """Replays the frames stored in a recording (`inputs/*` arrays)."""

    type: Literal["replay"]
    path: Path


@SOURCES.register
class ReplaySource(Source):
    type: ClassVar[str] = "replay"
    config_class = ReplaySourceConfig

    def __init__(self, config) -> None:
        super().__init__(config)
        self.recording = Recording.load(config.path)
        if not self.recording.inputs:
            raise ValueError(f"{config.path}: the recording holds no frames (no inputs/* arrays)")
        self.modalities = tuple(sorted(self.recording.inputs))

    @property
    def cameras(self) -> tuple[str, ...]:
        rec = self.recording
        count = 1 if rec.camera_ids is None or not len(rec) else int(rec.camera_ids.max()) + 1
        return tuple(rec.cameras[i] if i < len(rec.cameras) else str(i) for i in range(count))

    def _frames(self) -> Iterator[Frame]:
        rec = self.recording
        while True:
            for row in range(len(rec)):
                yield Frame(
                    frame_id=int(rec.frame_ids[row]),
                    ts=float(rec.ts[row]),
                    modalities={name: rec.input_value(name, row) for name in rec.inputs},
                    camera=int(rec.camera_ids[row]) if rec.camera_ids is not None else 0,
                    ground_truth={k: v[row] for k, v in rec.ground_truth.items()},
                )
            if not self.config.loop:
                return

    def frames(self) -> Iterator[Frame]:
        return paced(self._frames(), self.config.fps)
