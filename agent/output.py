"""A model's output on a frame, and the frame message it goes out in.

`Output` is what the loop computes (executed, predicted, reused with its age, the prior, or
gated: run because its prediction was the least confident). `Payloads` turns a
frame's outputs into its one message on `frames/<camera>` (docs/mqtt.md), once, where the
`[publish]` settings apply: models not published are left out (and no `decoded` is built for
them), `decoded` is built only when on, and `seq` counts frame messages, per agent: it goes on
from the outbox's last one after a restart, so that (with `possible_duplicate`) a subscriber
tells a second copy from a new message even where frame ids start again. `Payloads.send`
hands the message to the publisher, and each model's entry to its own topics where
`[publish.per_model.<id>]` asks for them (`topic`, `last`).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from agent.config import PublishConfig
from agent.readable import readable
from agent.sources import Frame
from links_tflite.tasks import TaskSpec

if TYPE_CHECKING:
    from agent.transport import Publisher

Provenance = Literal["executed", "predicted", "reused", "prior", "gated"]
FrameMessage = dict[str, Any]  # on frames/<camera>: the frame's fields and `outputs`
Entry = dict[str, Any]  # one model's output in it (with the frame's fields: a per-model topic)


@dataclass(frozen=True)
class Output:
    model: str
    value: np.ndarray
    provenance: Provenance
    sources: tuple[str, ...]
    est_agreement: float
    latency_ms: float
    withheld: str | None = None  # why the value is not published (e.g. "low agreement")
    age: int | None = None  # reused: frames of its camera since the model's output was made
    confidence: float | None = None  # predicted, where the gate is on: calibrated P(agrees)

    @property
    def executed(self) -> bool:
        return self.provenance == "executed"


def readable_value(spec: TaskSpec, value: np.ndarray, decimals: int | None) -> object:
    """`decoded`: the output read for a person (agent.readable). The one place it is made."""
    return readable(spec, value, decimals=decimals)


def model_entries(message: FrameMessage | None) -> list[Entry]:
    """A frame message's entries one per model, each with the frame's fields and `model`:
    what a per-model topic carries (none for no message)."""
    if message is None:
        return []
    head = {k: message[k] for k in ("frame_id", "seq", "camera", "ts", "stream_ts")}
    return [{**head, "model": model, **entry} for model, entry in message["outputs"].items()]


class Payloads:
    """Makes a frame's message; `seq` increases by one per frame message, from `first_seq`.
    `cameras` names the cameras by index (a frame's `camera`): the source's `cameras`."""

    def __init__(self, cameras: Sequence[str] = ("0",), first_seq: int = 1) -> None:
        self.cameras = tuple(cameras)
        self._seq = itertools.count(first_seq)

    def make(self, frame: Frame, outputs: Iterable[Output], settings: PublishConfig,
             specs: Mapping[str, TaskSpec]) -> FrameMessage | None:
        """The frame's message, or None where no model of the frame is published."""
        published = None if settings.models is None else set(settings.models)
        entries = {output.model: self._entry(output, specs[output.model], settings)
                   for output in outputs if published is None or output.model in published}
        if not entries:
            return None
        return {"frame_id": frame.frame_id, "seq": next(self._seq),
                "camera": self.cameras[frame.camera], "ts": time.time(),
                "stream_ts": frame.stream_ts, "outputs": entries}

    @staticmethod
    def _entry(output: Output, spec: TaskSpec, settings: PublishConfig) -> Entry:
        entry: Entry
        if output.withheld is not None:
            entry = {"value": None, "withheld": output.withheld}
        else:
            numbers = np.asarray(output.value, dtype=np.float64).reshape(-1).tolist()
            entry = {"value": numbers}
            if settings.decoded:
                entry["decoded"] = readable_value(
                    spec, output.value, settings.for_model(output.model).decimals)
        entry["provenance"] = output.provenance
        if output.age is not None:
            entry["age"] = output.age
        entry["sources"] = list(output.sources)
        entry["est_agreement"] = output.est_agreement
        if output.confidence is not None:
            entry["confidence"] = output.confidence
        entry["latency_ms"] = output.latency_ms
        return entry

    @staticmethod
    def send(message: FrameMessage, publisher: Publisher, settings: PublishConfig) -> None:
        """The frame message on `frames/<camera>` (QoS 1, through the outbox, keyed by its
        `seq`); each model's entry also on `models/<id>/output` (`topic` qos0: now or never;
        qos1: through the outbox) and retained on `models/<id>/last` where its rules ask."""
        topics = publisher.topics
        publisher.publish(topics.frames(message["camera"]), message, qos=1, key=message["seq"])
        if not settings.per_model:
            return
        for entry in model_entries(message):
            model = entry["model"]
            rules = settings.for_model(model)
            if rules.topic == "qos1":
                publisher.publish(topics.output(model), entry, qos=1)
            elif rules.topic == "qos0":
                publisher.publish_now(topics.output(model), entry, qos=0)
            if rules.last:
                publisher.publish(topics.last(model), entry, qos=0, retain=True)
