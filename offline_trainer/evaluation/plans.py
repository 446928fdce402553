"""The planner as the service runs it: an agent (`agent.scheduler.Agent`) configured with
`[selection] policy = "plan"` and the budget, driven frame by frame (`Agent.process`) over the
stream, scored on the messages it makes.

The agent is made of the evaluation agent's parts (its models, cost book, bundle and source;
constructor injection) with fresh ones where a run keeps state (profiling window, timetable,
gate, ensembles, payloads), and the config a user would write: the zoo's, with the `plan`
policy, the budget, no periodic windows, and online figures over a whole window. On the
stream's profiling part it does what a service does from start-up:
1. it plans from the bundle's figures (as `Agent.start` does) and runs that plan on the first
   `own_frames` frames, where it measures its own time per frame (`Agent.agent_ms`: the loop
   less the models and the predictions' links, plus publishing);
2. a profiling window over the rest (`reprofile`, as the control command asks): every model
   runs, the links' ensembles, each model's prior and its reuse curve are measured on the
   stream, the gate is calibrated; at the window's end the agent plans again with those
   figures, its own time reserved out of a delay budget (`Agent.select`).
The test part follows: the timetable runs the plan (`run/p` staggered per camera, outputs
reused with their age, fall-backs counted), and what the agent publishes is scored.

`offline` runs a given plan (chosen elsewhere, e.g. on the evaluation's own per-action
figures) the same way after the same profiling part, in place of the agent's: beside the
agent's own plan, it separates what the agent's figures change from what the loop does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agent.config import AgentConfig, BudgetConfig, ProfilingConfig, SelectionConfig
from agent.costbook import CostSnapshot
from agent.gate import Gate
from agent.output import Payloads
from agent.planning import Plan
from agent.policies.plan import plan_selection
from agent.scheduler import Agent
from agent.selection import Selection
from agent.sources.base import Frame
from agent.timetable import Timetable
from agent.window import ProfilingWindow
from links_tflite.ensemble import EnsemblePredictor

OWN_FRAMES = 60  # profiling-part frames the agent's own time is measured on, before the window


def plan_config(config: AgentConfig, budget: dict[str, float], window_frames: int
                ) -> AgentConfig:
    """The config with the `plan` policy, this budget, no periodic windows, and a requested
    window of `window_frames` frames whose online figures rest on all of them (blended with
    the bundle's, counted as the config's `min_samples` frames, at most the window's)."""
    return config.model_copy(update={
        "selection": SelectionConfig.model_validate(
            {**config.selection.model_dump(), "policy": "plan"}),
        "budget": BudgetConfig.model_validate(budget),
        "profiling": ProfilingConfig.model_validate({
            **config.profiling.model_dump(), "period_frames": 0, "period_s": 0.0,
            "sample_frames": window_frames, "agreement_window": window_frames,
            "min_samples": min(config.profiling.min_samples, window_frames)}),
    })


def planning_agent(agent: Agent, budget: dict[str, float], window_frames: int) -> Agent:
    """An agent on `agent`'s models, cost book, bundle and source, with its own state."""
    config = plan_config(agent.config, budget, window_frames)
    return Agent(config, agent.bundle, agent.source, agent.executor, agent.costs,
                 ProfilingWindow(config.profiling, agent.bundle.profile),
                 EnsemblePredictor(agent.bundle), payloads=Payloads(agent.source.cameras),
                 timetable=Timetable(), gate=Gate())


@dataclass(frozen=True)
class Planned:
    """The agent after the profiling part, and the selection it runs the test part with."""

    agent: Agent
    selection: Selection
    first: Selection  # the start-up plan, from the bundle's figures


def profile_and_plan(agent: Agent, costs: CostSnapshot, budget: dict[str, float],
                     frames: Sequence[Frame], own_frames: int = OWN_FRAMES,
                     offline: Plan | None = None) -> Planned:
    """The profiling part as the service goes through it (module doc), from the costs
    `costs` (the evaluation's, measured once); `offline`: run this plan afterwards instead
    of the agent's own."""
    own_frames = min(own_frames, len(frames) // 2)
    agent.costs.restore(costs)
    loop = planning_agent(agent, budget, len(frames) - own_frames)
    first = loop.select()
    loop.apply(first)
    for frame in frames[:own_frames]:
        loop.process(frame)
    loop.request_reprofile()
    for frame in frames[own_frames:]:
        loop.process(frame)  # the window's last frame re-plans (Agent._end_window)
    assert loop.selection is not None and not loop.window.open
    if offline is not None:
        loop.apply(plan_selection(offline))
    assert loop.selection is not None
    return Planned(loop, loop.selection, first)
