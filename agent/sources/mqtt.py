"""`mqtt`: records arriving on a topic of the agent's broker, one frame a message.

Under the service the source reads through the agent's own broker connection (it is given it:
anything with `subscribe(topic_filter, handler)`, the transport's client); a one-off command
(`record`, `select`) gives it a connection of its own (`Inbox`, which publishes nothing).

A message is, per `format`: a JSON object (`json`, a `dict`, parsed with the remote-input
bounds of agent.limits: size, depth, finite numbers), a UTF-8 text (`text`, a `str`), an
image file's bytes (`image`, PNG/JPEG/... through Pillow, at most `max_pixels`) or a `.npy`
array (`npy`, no pickles). Each is bounded by `max_payload_bytes` before it is read. Messages
wait in a queue of `queue` records; when the loop falls behind, the oldest waiting record is
dropped (the newest wins, as with a live camera). Every message that does not become a frame
is counted in the source's stats, hence in the agent's status (`too_large`, `malformed`,
`dropped`), and the first few of each kind are logged with their topic.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
from pydantic import Field, field_validator

from agent.configbase import Identifier, Paced
from agent.limits import LimitError, parse_json
from agent.sources.base import SOURCES, Frame, Source, paced

log = logging.getLogger(__name__)

LOGGED = 10
MAX_TOPIC_BYTES = 256


class Message(Protocol):
    topic: str
    payload: bytes


Handler = Callable[[Any], None]


class Subscriber(Protocol):
    """What the source needs of a broker connection (the transport's client satisfies it):
    messages on `topic_filter` handed to `handler` on the connection's thread; renewed after
    every reconnection."""

    def subscribe(self, topic_filter: str, handler: Handler) -> None: ...


class MqttSourceConfig(Paced):
    """Records arriving on `topic` (a topic filter: `+` and `#` allowed) of the agent's
    broker, as the modality `modality`."""

    type: Literal["mqtt"]
    topic: str = Field(min_length=1)
    format: Literal["json", "text", "image", "npy"] = "json"
    modality: Identifier = "record"
    max_payload_bytes: int = Field(1024 * 1024, ge=16, le=16 * 1024 * 1024)
    queue: int = Field(64, ge=1, le=10_000, description="records waiting for the loop; "
                                                        "beyond, the oldest is dropped")
    # image only: as the `images` source
    size: tuple[int, int] | None = None
    grayscale: bool = False
    scale: float = Field(1.0 / 255.0, gt=0.0)
    max_pixels: int = Field(4096 * 4096, ge=1, le=100_000_000)

    @field_validator("topic")
    @classmethod
    def _a_topic_filter(cls, topic: str) -> str:
        if len(topic.encode("utf-8")) > MAX_TOPIC_BYTES:
            raise ValueError(f"longer than {MAX_TOPIC_BYTES} bytes")
        if "\x00" in topic:
            raise ValueError("contains a NUL character")
        levels = topic.split("/")
        for i, level in enumerate(levels):
            if "#" in level and (level != "#" or i != len(levels) - 1):
                raise ValueError("`#` must be a whole level, the last one")
            if "+" in level and level != "+":
                raise ValueError("`+` must be a whole level")
        return topic


class Skip(ValueError):
    """A message that is not a record; the message says why."""


class Inbox:
    """A broker connection of its own, for a source read outside the service (`record`,
    `select`): it subscribes only, under a client id of its own, and publishes nothing (so it
    neither shows the box online nor takes the agent's client id)."""

    def __init__(self, config: Any, device_id: str) -> None:
        import paho.mqtt.client as mqtt

        from agent.transport.mqtt import secure

        self._client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                   client_id=f"mlink-source-{device_id}-{os.getpid()}",
                                   protocol=mqtt.MQTTv5 if config.protocol == "5"
                                   else mqtt.MQTTv311)
        self._handlers: dict[str, Handler] = {}
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._matches = mqtt.topic_matches_sub
        secure(self._client, config)
        self._client.connect_async(config.host, config.port, config.keepalive_s)
        self._client.loop_start()

    def _on_connect(self, client: Any, _userdata: Any, _flags: Any, reason_code: Any,
                    _properties: Any) -> None:
        if reason_code.is_failure:
            log.error("mqtt source: the broker refused the connection: %s", reason_code)
            return
        for topic in self._handlers:
            client.subscribe(topic, qos=1)

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        for topic_filter, handler in self._handlers.items():
            if self._matches(topic_filter, message.topic):
                handler(message)
                return

    def subscribe(self, topic_filter: str, handler: Handler) -> None:
        self._handlers[topic_filter] = handler
        if self._client.is_connected():
            self._client.subscribe(topic_filter, qos=1)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@SOURCES.register
class MqttSource(Source):
    type: ClassVar[str] = "mqtt"
    config_class = MqttSourceConfig
    needs_broker: ClassVar[bool] = True

    def __init__(self, config: MqttSourceConfig, broker: Subscriber,
                 owned: Inbox | None = None) -> None:
        super().__init__(config)
        self.modalities = (config.modality,)
        self.counters = {"received": 0, "records": 0, "too_large": 0, "malformed": 0,
                         "dropped": 0}
        self._queue: deque[Any] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._owned = owned  # a connection made for this source alone, closed with it
        broker.subscribe(config.topic, self._receive)

    # paho's thread: count, bound and queue only
    def _receive(self, message: Message) -> None:
        with self._cond:
            self.counters["received"] += 1
            if len(message.payload) > self.config.max_payload_bytes:
                self._skip("too_large", message.topic,
                           f"{len(message.payload)} bytes, more than "
                           f"{self.config.max_payload_bytes}")
                return
            if len(self._queue) >= self.config.queue:
                self._queue.popleft()
                self.counters["dropped"] += 1
            self._queue.append(message)
            self._cond.notify()

    def _skip(self, kind: str, topic: str, why: str) -> None:
        self.counters[kind] += 1
        log.log(logging.WARNING if self.counters[kind] <= LOGGED else logging.DEBUG,
                "mqtt source %s: a message on %s skipped: %s (%s #%d)", self.cameras[0],
                topic, why, kind, self.counters[kind])

    def parse(self, payload: bytes) -> Any:
        """The record a message's payload holds, or Skip."""
        kind = self.config.format
        if kind == "json":
            try:
                record = parse_json(payload, self.config.max_payload_bytes)
            except LimitError as exc:
                raise Skip("; ".join(f"{p or 'payload'}: {m}" for p, m in exc.errors)) from None
            if not isinstance(record, dict):
                raise Skip(f"a JSON {type(record).__name__}, not an object")
            return record
        if kind == "text":
            try:
                return payload.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise Skip(f"not UTF-8 ({exc.reason})") from None
        if kind == "npy":
            try:
                return np.load(io.BytesIO(payload), allow_pickle=False).astype(np.float32)
            except (ValueError, OSError, EOFError) as exc:
                raise Skip(f"not a .npy array ({exc})") from None
        return self._image(payload)

    def _image(self, payload: bytes) -> np.ndarray:
        try:
            from PIL import Image, UnidentifiedImageError
        except ImportError:
            raise RuntimeError("the mqtt source's `image` format needs Pillow: "
                               "pip install pillow") from None
        try:
            with Image.open(io.BytesIO(payload)) as image:
                width, height = image.size
                if width * height > self.config.max_pixels:
                    raise Skip(f"{width}x{height} pixels, more than {self.config.max_pixels}")
                image = image.convert("L" if self.config.grayscale else "RGB")
                if self.config.size is not None:
                    image = image.resize((self.config.size[1], self.config.size[0]))
                pixels = np.asarray(image, dtype=np.float32)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise Skip(f"not a readable image ({exc})") from None
        return pixels * np.float32(self.config.scale)

    def _next(self) -> Any | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait(0.5)
            return None if self._closed else self._queue.popleft()

    def _frames(self) -> Iterator[Frame]:
        frame_id = 0
        while (message := self._next()) is not None:
            try:
                record = self.parse(bytes(message.payload))
            except Skip as exc:
                with self._cond:
                    self._skip("malformed", message.topic, str(exc))
                continue
            with self._cond:
                self.counters["records"] += 1
            yield Frame(frame_id=frame_id, ts=time.time(),
                        modalities={self.config.modality: record})
            frame_id += 1

    def frames(self) -> Iterator[Frame]:
        return paced(self._frames(), self.config.fps)

    def stats(self) -> dict[str, dict[str, int]]:
        with self._cond:
            return {self.cameras[0]: dict(self.counters)}

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._owned is not None:
            self._owned.close()
