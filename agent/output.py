"""A model's output on a frame, and the message it becomes.

`Output` is what the loop computes (executed or predicted); `Payloads` turns a frame's outputs
into the messages published on `models/<id>/output`, once, where the `[publish]` settings
apply: outputs of models not published become no message (and no `decoded` is built for
them), `decoded` is built only when published, and `seq` counts the messages. Each message
names the camera (feed) that saw the frame and carries the stream's timestamp (`stream_ts`,
null where the source has none).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from agent.config import PublishConfig
from agent.sources import Frame
from links_tflite.tasks import TaskSpec, decode

Provenance = Literal["executed", "predicted", "reused", "prior", "gated"]


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

    @property
    def executed(self) -> bool:
        return self.provenance == "executed"


class Payloads:
    """Makes the messages of a frame's outputs; `seq` increases by one per message.
    `cameras` names the cameras by index (a frame's `camera`): the source's `cameras`."""

    def __init__(self, cameras: Sequence[str] = ("0",)) -> None:
        self.cameras = tuple(cameras)
        self._seq = itertools.count(1)

    def make(self, frame: Frame, outputs: Iterable[Output], settings: PublishConfig,
             specs: Mapping[str, TaskSpec]) -> list[dict[str, object]]:
        published = None if settings.models is None else set(settings.models)
        return [self._payload(frame, output, specs[output.model], settings.decoded)
                for output in outputs if published is None or output.model in published]

    def _payload(self, frame: Frame, output: Output, spec: TaskSpec, decoded: bool
                 ) -> dict[str, object]:
        numbers = np.asarray(output.value, dtype=np.float64).reshape(-1).tolist()
        payload: dict[str, object] = {
            "frame_id": frame.frame_id,
            "camera": self.cameras[frame.camera],
            "ts": frame.ts,
            "stream_ts": frame.stream_ts,
            "model": output.model,
            "value": numbers,
        }
        if decoded:
            payload["decoded"] = decode(spec, numbers)
        payload.update({
            "provenance": output.provenance,
            "sources": list(output.sources),
            "est_agreement": output.est_agreement,
            "latency_ms": output.latency_ms,
            "seq": next(self._seq),
        })
        return payload
