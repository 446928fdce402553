"""The timetable of a plan (agent.planning) in the loop: which models run on a frame, and each
model's last exact output per camera, served again (`reused`) with its age.

- Frames are counted per camera: the n-th frame the agent processes from camera c has index n
  there, and ages are counted in those frames.
- A model planned `run/p` runs on the frames of each camera whose index n satisfies
  (n + offset) % p == 0. The offsets are spread so that the per-frame delay stays flat: over
  one cycle (the least common multiple of the periods) the models are placed, the most
  delay per frame first, at the offset that keeps the heaviest frame lightest (then the sum
  of squares).
- Every exact output (a run, a `run/p` turn, a profiling window's run) is kept per (model,
  camera) with the index of its frame. Between its turns a `run/p` model is served that
  output with its age, as long as its reuse curve covers the age (the figures the plan was
  made with); older, or where the model has not run on that camera yet (the first frames
  after a plan, a new camera), the loop falls back (agent.scheduler) and counts it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from agent.planning import RUN, Plan


@dataclass(frozen=True)
class Reused:
    output: np.ndarray
    age: int  # frames of the camera since the output's frame
    agreement: float  # the reuse curve at that age


class Timetable:
    def __init__(self) -> None:
        self.periods: dict[str, int] = {}  # run/p models only
        self.offsets: dict[str, int] = {}
        self.curves: dict[str, tuple[float, ...]] = {}
        self.seen: dict[int, int] = {}  # camera -> frames processed
        self._last: dict[tuple[str, int], tuple[np.ndarray, int]] = {}

    def set_plan(self, plan: Plan | None, delays: Mapping[str, float],
                 curves: Mapping[str, Sequence[float]]) -> None:
        """Take a plan's `run/p` actions (none without a plan), staggered by their delays
        (ms per run), with the reuse curves it was made with. The outputs kept stay."""
        self.periods = {} if plan is None else {
            m: a.period for m, a in plan.actions.items() if a.kind == RUN and a.period > 1}
        self.curves = {m: tuple(curves.get(m, ())) for m in self.periods}
        self.offsets = stagger(self.periods, delays)

    def tick(self, camera: int) -> int:
        """A new frame of `camera`: its index there."""
        index = self.seen.get(camera, -1) + 1
        self.seen[camera] = index
        return index

    def index(self, camera: int) -> int:
        """The index of the camera's frame in progress (the last `tick`)."""
        return self.seen.get(camera, 0)

    def due(self, camera: int) -> list[str]:
        """The `run/p` models whose turn is the camera's frame in progress."""
        n = self.index(camera)
        return sorted(m for m, p in self.periods.items() if (n + self.offsets[m]) % p == 0)

    def record(self, model: str, camera: int, output: np.ndarray) -> None:
        """The model's exact output on the camera's frame in progress."""
        self._last[(model, camera)] = (output, self.index(camera))

    def reused(self, model: str, camera: int) -> Reused | None:
        """The model's last exact output on the camera with its age, where its reuse curve
        covers that age; None where it is older or there is none."""
        last = self._last.get((model, camera))
        if last is None:
            return None
        output, made = last
        age = self.index(camera) - made
        curve = self.curves.get(model, ())
        if not 1 <= age <= len(curve):
            return None
        return Reused(output, age, curve[age - 1])

    def forget(self, keep: set[str]) -> None:
        """Drop the kept outputs of models no longer configured."""
        self._last = {k: v for k, v in self._last.items() if k[0] in keep}

    def to_dict(self) -> dict[str, object]:
        """For the status: each `run/p` model's period and offset."""
        return {m: {"period": p, "offset": self.offsets[m]}
                for m, p in sorted(self.periods.items())}


def stagger(periods: Mapping[str, int], delays: Mapping[str, float]) -> dict[str, int]:
    """An offset per model in [0, its period) that keeps the heaviest frame of a cycle as light
    as it can (greedy, the model with the most delay per frame first; ties: the lower sum of
    squares, the lower offset)."""
    if not periods:
        return {}
    cycle = math.lcm(*periods.values())
    load = np.zeros(cycle)
    offsets = {}
    steps = np.arange(cycle)
    for model in sorted(periods, key=lambda m: (-max(delays.get(m, 0.0), 0.0) / periods[m],
                                                periods[m], m)):
        period, delay = periods[model], max(delays.get(model, 0.0), 0.0) or 1e-6
        best: tuple[float, float, int] | None = None
        for offset in range(period):
            trial = load + delay * ((steps + offset) % period == 0)
            key = (float(trial.max()), float((trial ** 2).sum()), offset)
            if best is None or key < best:
                best = key
        assert best is not None
        offsets[model] = best[2]
        load += delay * ((steps + best[2]) % period == 0)
    return offsets
