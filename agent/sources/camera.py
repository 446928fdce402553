"""`camera`: a V4L2 device (`/dev/videoN`, or a stable `/dev/v4l/by-id/...` link) read through
FFmpeg's `v4l2` input by the same decoder as `video`. A device that is missing at start is an
error naming it; one unplugged while running is a disconnect, opened again with back-off
until it is back. Like a live stream, the agent takes the newest frame."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator

from agent.sources.base import SOURCES, Frame, Source
from agent.sources.decode import (
    DecodedConfig,
    LiveReader,
    Size,
    live_frames,
    open_container,
    views_of,
)


class CameraSourceConfig(DecodedConfig):
    """A V4L2 camera (`device` = /dev/videoN), read through FFmpeg's v4l2 input by PyAV;
    optionally the capture `capture_size` [height, width], `capture_fps` and `input_format`
    (e.g. mjpeg, yuyv422) asked of the device."""

    type: Literal["camera"]
    device: Annotated[Path, Field(description="an absolute device path")]
    capture_size: Size | None = None
    capture_fps: int | None = Field(None, ge=1, le=1000)
    input_format: Annotated[str, Field(pattern=r"^[a-z0-9_]{1,32}$")] | None = None

    @field_validator("device")
    @classmethod
    def _absolute(cls, device: Path) -> Path:
        if not device.is_absolute():
            raise ValueError("the camera device must be an absolute path such as /dev/video0")
        return device


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


@SOURCES.register
class CameraSource(Source):
    type: ClassVar[str] = "camera"
    config_class = CameraSourceConfig

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
