"""`video`: a video file, or a live stream at a URL (RTSP, HTTP, ...), decoded by PyAV.

A file is read in the agent's loop, every frame (or `fps` per second of its own time), as fast
as the agent takes them, or at the file's own pace with `realtime`; at its end it stops, or
starts again with `loop`. A URL is a live stream: a `LiveReader` thread decodes it as it comes
and the agent takes the newest frame (the ones it had no time for are counted as dropped);
when the stream drops it is opened again with back-off. Each frame carries the wall clock
(`ts`) and the stream's presentation time (`stream_ts`).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from agent.sources.base import SOURCES, Frame, Source
from agent.sources.decode import (
    Decimator,
    DecodedConfig,
    LiveReader,
    StreamCounters,
    convert,
    decoded,
    live_frames,
    open_container,
    views_of,
)

URL_PATTERN = r"^(rtsp|rtsps|rtmp|http|https|srt|udp|tcp)://[^\s]{1,2040}$"
OPTION_KEY = r"^[a-z0-9_]{1,64}$"


class VideoSourceConfig(DecodedConfig):
    """A video file (`path`) or a live stream (`url`: rtsp://, http://, ...), decoded by PyAV
    (the `video` extra). A file ends, or starts again with `loop`; `realtime` reads it at its
    own pace instead of as fast as the agent takes frames. `options`: FFmpeg input options
    (RTSP goes over TCP unless `rtsp_transport` says otherwise)."""

    type: Literal["video"]
    path: Path | None = None
    url: Annotated[str, Field(pattern=URL_PATTERN)] | None = None
    realtime: bool = False
    options: dict[Annotated[str, Field(pattern=OPTION_KEY)],
                  Annotated[str, Field(max_length=256)]] = Field(default_factory=dict,
                                                                 max_length=32)

    @model_validator(mode="after")
    def _file_or_url(self) -> VideoSourceConfig:
        if (self.path is None) == (self.url is None):
            raise ValueError("give `path` (a video file) or `url` (a live stream), not both")
        if self.url is not None and (self.loop or self.realtime):
            raise ValueError("`loop` and `realtime` apply to a file, not to a live stream")
        return self


def ffmpeg_options(url: str, options: dict[str, str]) -> dict[str, str]:
    """RTSP over TCP unless said otherwise: interleaved in the one connection, no UDP ports
    to open, no packet loss to conceal."""
    if url.startswith(("rtsp://", "rtsps://")):
        return {"rtsp_transport": "tcp", **options}
    return dict(options)


@SOURCES.register
class VideoSource(Source):
    type: ClassVar[str] = "video"
    config_class = VideoSourceConfig

    def __init__(self, config: Any, opener: Any = open_container) -> None:
        super().__init__(config)
        self.views = views_of(config)
        self.modalities = tuple(v.name for v in self.views)
        self.live = config.url is not None
        self.target = config.url if self.live else str(config.path)
        if not self.live and not Path(self.target).is_file():
            raise FileNotFoundError(f"{self.target}: no such video file")
        options = ffmpeg_options(self.target, dict(config.options))
        self._open = lambda: opener(self.target, None, options, config.open_timeout_s)
        self.reader: LiveReader | None = None
        self.counters = StreamCounters()
        if self.live:
            self.reader = LiveReader(self.cameras[0], self._open, config.fps,
                                     config.reconnect_s, config.reconnect_max_s)
            self.counters = self.reader.counters
            self.reader.start()  # a URL that cannot be opened is an error now, naming it
        else:
            self._open().close()  # so is a file that is not a video

    def frames(self) -> Iterator[Frame]:
        if self.reader is not None:
            return live_frames(self.reader, self.views)
        return self._file_frames()

    def _file_frames(self) -> Iterator[Frame]:
        ids = itertools.count()
        decimator = Decimator(self.config.fps)
        before = -1
        while before != self.counters.decoded:  # a file with no frame does not loop forever
            before = self.counters.decoded
            container = self._open()
            started: tuple[float, float] | None = None  # (wall, stream) at the first frame
            try:
                for stream_ts, frame in decoded(container):
                    self.counters.decoded += 1
                    if not decimator.due(stream_ts):
                        self.counters.skipped += 1
                        continue
                    if self.config.realtime and stream_ts is not None:
                        if started is None:
                            started = (time.monotonic(), stream_ts)
                        delay = started[0] + (stream_ts - started[1]) - time.monotonic()
                        if delay > 0:
                            time.sleep(delay)
                    yield Frame(frame_id=next(ids), ts=time.time(), stream_ts=stream_ts,
                                modalities=convert(frame, self.views))
            finally:
                container.close()
            if not self.config.loop:
                return

    def stats(self) -> dict[str, dict[str, int]]:
        return {self.cameras[0]: self.counters.to_dict()}

    def close(self) -> None:
        if self.reader is not None:
            self.reader.stop()
