"""A plan (`agent.planning`) run on the stream with the agent's own parts.

The agent's loop does not run plans yet (it runs an activated set and predicts the rest), so
the evaluation runs one here, with the parts the loop uses: the agent's model executor (the
models resident for the plan loaded, each frame's runs in one call), its ensemble predictor
(the links the plan's predictions read, loaded once) and its message maker. Per frame of
camera c, the t-th of that camera:
- `run` models run; `run/p` models run where (t + c + offset) % p == 0, the offsets staggered
  so that the per-frame delay stays flat (`stagger`), and between runs their last exact
  output of that camera is served again (reused), the prior before their first run;
- `predict` targets come from the ensemble of the `run` models' outputs;
- `prior` targets get the bundle's constant predictor; `none` gets nothing.
The wall time per frame counts all of it: the models, the links and ensembles, the messages.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np

from agent.executor import Ran
from agent.output import Output, Provenance
from agent.planning import NONE, PREDICT, PRIOR, RUN, Plan
from agent.scheduler import Agent
from agent.sources.base import Frame

REUSED = cast(Provenance, "reused")  # the loop's provenance once it serves reuse (issue 20)


def stagger(plan: Plan, delays: dict[str, float]) -> dict[str, int]:
    """An offset per `run/p` model: heaviest first, each where it least raises the heaviest
    slot of the cycle (the least common multiple of the periods)."""
    periodic = sorted(((m, a.period) for m, a in plan.actions.items()
                       if a.kind == RUN and a.period > 1),
                      key=lambda item: (-delays.get(item[0], 0.0), item[0]))
    cycle = math.lcm(*(p for _, p in periodic)) if periodic else 1
    load = np.zeros(cycle)
    offsets = {}
    for model, period in periodic:
        slots = np.arange(cycle)
        best = min(range(period), key=lambda o: (
            float((load + delays.get(model, 0.0) * ((slots + o) % period == 0)).max()), o))
        offsets[model] = best
        load += delays.get(model, 0.0) * ((slots + best) % period == 0)
    return offsets


@dataclass(frozen=True)
class PlanRun:
    """What a plan's run published per model and frame (None: no output), and its time."""

    values: dict[str, list[np.ndarray | None]]
    ms_per_frame: float
    model_ms_per_frame: float
    runs_per_frame: float  # models executed per frame, on average


def run_plan(agent: Agent, frames: Sequence[Frame], plan: Plan, delays: dict[str, float],
             lead: Sequence[Frame] = (), warmup: int = 5) -> PlanRun:
    """Run the plan over the frames (module doc); the first `warmup` frames run every
    resident model once, untimed (first inferences allocate). The plan runs on the `lead`
    frames first, neither timed nor scored: the stream before these frames, so that a
    `run/p` model has its last output at the first frame, as on a stream that goes on."""
    resident = sorted(m for m, a in plan.actions.items() if a.kind == RUN)
    agent.executor.unload_all(keep=resident)
    for model in resident:
        agent.executor.load(model)
    active = plan.active
    agent.ensembles.prepare(active, plan.with_kind(PREDICT))
    for frame in frames[:warmup]:
        agent.executor.run_models(frame, resident)
    offsets = stagger(plan, delays)
    seen: dict[int, int] = {}
    last: dict[tuple[int, str], np.ndarray] = {}
    values: dict[str, list[np.ndarray | None]] = {m: [] for m in plan.actions}
    elapsed = model_ms = 0.0
    runs = 0
    scored_from = len(lead)
    for index, frame in enumerate([*lead, *frames]):
        if index == scored_from:
            elapsed = model_ms = 0.0
            runs = 0
            values = {m: [] for m in plan.actions}
        start = time.perf_counter()
        t = seen.get(frame.camera, 0)
        seen[frame.camera] = t + 1
        to_run = [m for m in resident if plan.actions[m].period == 1
                  or (t + frame.camera + offsets[m]) % plan.actions[m].period == 0]
        outcomes, _ = agent.executor.run_models(frame, to_run)
        ran = {m: o for m, o in outcomes.items() if isinstance(o, Ran)}
        outputs = [Output(m, r.output, "executed", (m,), 1.0, r.latency_ms)
                   for m, r in sorted(ran.items())]
        for model, r in ran.items():
            last[(frame.camera, model)] = r.output
        sources = {m: ran[m].output for m in active if m in ran}
        for model, action in plan.actions.items():
            if model in ran:
                continue
            output: Output | None = None
            if action.kind == RUN and (frame.camera, model) in last:
                output = Output(model, last[(frame.camera, model)], REUSED, (model,), 0.0, 0.0)
            elif action.kind == PREDICT and sources:
                prediction = agent.ensembles.predict(model, sources)
                output = Output(model, prediction.value, "predicted", prediction.sources,
                                prediction.est_agreement, 0.0)
            if output is None and action.kind != NONE and model in agent.bundle.priors:
                assert action.kind in (RUN, PRIOR, PREDICT)
                prior = agent.ensembles.prior(model)
                output = Output(model, prior.value, "prior", (), prior.est_agreement, 0.0)
            if output is not None:
                outputs.append(output)
        agent.payloads.make(frame, outputs, agent.config.publish, agent.bundle.models)
        elapsed += time.perf_counter() - start
        model_ms += sum(r.latency_ms for r in ran.values())
        runs += len(ran)
        got = {o.model: np.asarray(o.value, np.float32) for o in outputs}
        for model in values:
            values[model].append(got.get(model))
    n = max(1, len(frames))
    return PlanRun(values, elapsed * 1e3 / n, model_ms / n, runs / n)
