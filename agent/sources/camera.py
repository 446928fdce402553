"""`camera`: a V4L2 device (`/dev/videoN`, or a stable `/dev/v4l/by-id/...` link) read through
FFmpeg's `v4l2` input by the same decoder as `video`. A device that is missing at start is an
error naming it; one unplugged while running is a disconnect, opened again with back-off
until it is back. Like a live stream, the agent takes the newest frame."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from agent.sources.base import Frame, Source
from agent.sources.decode import LiveReader, live_frames, open_container, views_of


def v4l2_options(config: Any) -> dict[str, str]:
    options: dict[str, str] = {}
    if config.capture_size is not None:
        height, width = config.capture_size
        options["video_size"] = f"{width}x{height}"
    if config.capture_fps is not None:
        options["framerate"] = str(config.capture_fps)
    if config.input_format is not None:
        options["input_format"] = config.input_format
    return options


class CameraSource(Source):
    type: ClassVar[str] = "camera"

    def __init__(self, config: Any, opener: Any = open_container) -> None:
        super().__init__(config)
        self.views = views_of(config)
        self.modalities = tuple(v.name for v in self.views)
        device = str(config.device)
        if not Path(device).exists():
            raise FileNotFoundError(f"{device}: no such camera device (plugged in? "
                                    "`ls /dev/video*` lists the V4L2 devices)")
        options = v4l2_options(config)
        self.reader = LiveReader(
            self.cameras[0], lambda: opener(device, "v4l2", options, config.open_timeout_s),
            config.fps, config.reconnect_s, config.reconnect_max_s)
        self.reader.start()

    def frames(self) -> Iterator[Frame]:
        return live_frames(self.reader, self.views)

    def stats(self) -> dict[str, dict[str, int]]:
        return {self.cameras[0]: self.reader.counters.to_dict()}

    def close(self) -> None:
        self.reader.stop()
