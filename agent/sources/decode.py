"""Video decoding shared by the `video` and `camera` sources: PyAV (the `video` extra).

PyAV was chosen by measurement (benchmarks/results/decode.md): to the small RGB arrays models
take it spends about half OpenCV's CPU per 1080p frame, because the resize and the colour
conversion are one swscale pass; it gives each frame's presentation time, and passes FFmpeg's
options through (RTSP transport, timeouts, V4L2 size and rate) under one API for files,
URLs and devices.

- `View`: one modality made from a decoded frame (size, RGB or grey, scale), converted once
  per frame whatever the number of models reading it.
- `Decimator`: keeps at most `fps` frames per second of stream time (0: every frame).
- `LiveReader`: a thread that decodes a live stream (RTSP, HTTP, a camera) as fast as it comes
  and keeps only the newest frame, so that an agent that falls behind takes the newest one;
  the frames it overwrote are counted as `dropped`. When the stream fails or ends it is
  opened again after a back-off that doubles from `reconnect_s` to `reconnect_max_s`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
from pydantic import Field, model_validator

from agent.configbase import Identifier, Paced, Strict
from agent.sources.base import Frame

log = logging.getLogger(__name__)


Size = tuple[Annotated[int, Field(ge=1, le=8192)], Annotated[int, Field(ge=1, le=8192)]]


class ViewConfig(Strict):
    """A modality made from each decoded frame: `size` [height, width] (unset: the stream's),
    RGB or `grayscale`, float32 values = pixel (0..255) x `scale` + `offset` (e.g. [-1, 1]:
    scale = 2/255, offset = -1). Made once per frame, whatever the number of models reading
    it."""

    size: Size | None = None
    grayscale: bool = False
    scale: float = Field(1.0 / 255.0, gt=0.0, le=1e6)
    offset: float = Field(0.0, ge=-1e6, le=1e6)


class DecodedConfig(Paced):
    """What the `video` and `camera` sources' configs share: the frame as the primary modality
    (`modality`, `size`, `grayscale`, `scale`, `offset`: as a view's) and `views` (more
    modalities, other sizes); `fps` keeps at most that many frames per second of stream time
    (0: every frame); a live stream that drops is opened again after `reconnect_s`, doubling
    up to `reconnect_max_s`."""

    modality: Identifier = "image"
    size: Size | None = None
    grayscale: bool = False
    scale: float = Field(1.0 / 255.0, gt=0.0, le=1e6)
    offset: float = Field(0.0, ge=-1e6, le=1e6)
    views: dict[Identifier, ViewConfig] = Field(default_factory=dict, max_length=16)
    reconnect_s: float = Field(0.5, gt=0.0, le=600.0)
    reconnect_max_s: float = Field(30.0, gt=0.0, le=3600.0)
    open_timeout_s: float = Field(10.0, gt=0.0, le=600.0,
                                  description="opening, and each read, of the stream")

    @model_validator(mode="after")
    def _views_differ_from_primary(self) -> DecodedConfig:
        if self.modality in self.views:
            raise ValueError(f"views: {self.modality!r} is already the primary modality")
        return self


class VideoError(RuntimeError):
    """A stream, file or device that cannot be opened or decoded; the message names it."""


def import_av() -> Any:
    try:
        import av
    except ImportError:
        raise RuntimeError("the video and camera sources need PyAV: "
                           "pip install 'mlink-edge[video]'") from None
    return av


def open_container(target: str, fmt: str | None = None, options: dict[str, str] | None = None,
                   timeout_s: float = 10.0) -> Any:
    """An FFmpeg input (file, URL or device) opened by PyAV, or a VideoError naming it."""
    av = import_av()
    try:
        container = av.open(target, format=fmt, options=dict(options or {}),
                            timeout=(timeout_s, timeout_s))
    except Exception as exc:  # PyAV raises FFmpeg's errors as several classes
        raise VideoError(f"{target}: cannot open ({exc})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{target}: no video stream")
    return container


def decoded(container: Any) -> Iterator[tuple[float | None, Any]]:
    """(presentation time in seconds or None, frame) for every frame of the first video
    stream, decoded with FFmpeg's own threading."""
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    for frame in container.decode(stream):
        yield (None if frame.time is None else float(frame.time)), frame


@dataclass
class View:
    """A modality made from each decoded frame: `size` (height, width) or the stream's,
    RGB (H, W, 3) or grey (H, W), float32 pixel values (0..255) x `scale` + `offset`. Resize
    and colour conversion are one swscale pass, through one reformatter kept for the view (a
    new one per frame costs a third more CPU: benchmarks/results/decode.md)."""

    name: str
    size: tuple[int, int] | None = None
    grayscale: bool = False
    scale: float = 1.0 / 255.0
    offset: float = 0.0
    _reformatter: Any = field(default=None, repr=False, compare=False)

    def convert(self, frame: Any) -> np.ndarray:
        if self._reformatter is None:
            self._reformatter = import_av().video.reformatter.VideoReformatter()
        height, width = self.size if self.size is not None else (frame.height, frame.width)
        pixels = self._reformatter.reformat(frame, width=width, height=height,
                                            format="gray" if self.grayscale else "rgb24")
        out = pixels.to_ndarray().astype(np.float32)
        out *= np.float32(self.scale)
        if self.offset:
            out += np.float32(self.offset)
        return out


def views_of(config: Any) -> tuple[View, ...]:
    """The source's primary modality, then its `[...views.<name>]`."""
    primary = View(config.modality, tuple(config.size) if config.size else None,
                   config.grayscale, config.scale, config.offset)
    extra = (View(name, tuple(v.size) if v.size else None, v.grayscale, v.scale, v.offset)
             for name, v in config.views.items())
    return (primary, *extra)


def convert(frame: Any, views: tuple[View, ...]) -> dict[str, np.ndarray]:
    return {view.name: view.convert(frame) for view in views}


class Decimator:
    """At most `fps` frames per second of stream time; a stream whose clock jumps back (a
    loop, a reconnection) starts again from its new time."""

    def __init__(self, fps: float) -> None:
        self.period = 1.0 / fps if fps > 0 else 0.0
        self._next: float | None = None

    def due(self, stream_ts: float | None) -> bool:
        if self.period == 0.0:
            return True
        now = time.monotonic() if stream_ts is None else stream_ts
        if self._next is None or now < self._next - 2 * self.period:
            self._next = now
        if now + 1e-9 < self._next:
            return False
        self._next = max(self._next + self.period, now - self.period)
        return True


@dataclass
class StreamCounters:
    decoded: int = 0  # frames the decoder produced
    skipped: int = 0  # left out to keep to the target fps
    dropped: int = 0  # kept, then overwritten by a newer one before the agent took it
    disconnects: int = 0  # the stream, once open, failed or ended
    failed_opens: int = 0  # attempts to open it again that failed
    reconnects: int = 0  # opened again after a disconnect

    def to_dict(self) -> dict[str, int]:
        return dict(vars(self))


Opener = Callable[[], Any]


class LiveReader:
    """Decodes a live stream on its own thread; `take()` returns the newest frame."""

    def __init__(self, name: str, opener: Opener, fps: float, reconnect_s: float,
                 reconnect_max_s: float) -> None:
        self.name = name
        self.opener = opener
        self.decimator = Decimator(fps)
        self.reconnect_s = reconnect_s
        self.reconnect_max_s = reconnect_max_s
        self.counters = StreamCounters()
        self._cond = threading.Condition()
        self._slot: tuple[Any, float | None, float] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Open the stream now (a bad URL or a missing device is an error here, naming it),
        then decode on a daemon thread."""
        container = self.opener()
        self._thread = threading.Thread(target=self._run, args=(container,),
                                        name=f"source-{self.name}", daemon=True)
        self._thread.start()

    def _run(self, container: Any) -> None:
        delay = self.reconnect_s
        while not self._stop.is_set():
            opened = container is not None
            try:
                if container is None:
                    container = self.opener()
                    opened = True
                    self.counters.reconnects += 1
                    log.info("%s: reconnected", self.name)
                for stream_ts, frame in decoded(container):
                    if self._stop.is_set():
                        return
                    delay = self.reconnect_s
                    self.counters.decoded += 1
                    if not self.decimator.due(stream_ts):
                        self.counters.skipped += 1
                        continue
                    with self._cond:
                        if self._slot is not None:
                            self.counters.dropped += 1
                        self._slot = (frame, stream_ts, time.time())
                        self._cond.notify_all()
                reason = "the stream ended"
            except Exception as exc:  # a live stream fails in many ways; it is retried
                reason = str(exc)
            finally:
                if container is not None:
                    with contextlib.suppress(Exception):
                        container.close()
                container = None
            if self._stop.is_set():
                return
            if opened:
                self.counters.disconnects += 1
            else:
                self.counters.failed_opens += 1
            log.warning("%s: %s; opening it again in %.1f s", self.name, reason, delay)
            self._stop.wait(delay)
            delay = min(delay * 2, self.reconnect_max_s)

    def take(self) -> tuple[Any, float | None, float] | None:
        """(frame, stream time, wall clock) of the newest frame not taken yet, waiting for
        one; None once stopped."""
        with self._cond:
            while self._slot is None and not self._stop.is_set():
                self._cond.wait(0.5)
            item, self._slot = self._slot, None
            return None if self._stop.is_set() else item

    def stop(self) -> None:
        """Stop at once (safe from a signal handler): `take` returns None; the thread ends
        after its current read, at most `open_timeout_s` later."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()


def live_frames(reader: LiveReader, views: tuple[View, ...]) -> Iterator[Frame]:
    """The frames a live reader keeps, converted to the views; ends when it is stopped."""
    for frame_id in itertools.count():
        item = reader.take()
        if item is None:
            return
        frame, stream_ts, wall = item
        yield Frame(frame_id=frame_id, ts=wall, stream_ts=stream_ts,
                    modalities=convert(frame, views))
