"""The evaluation's `plan` method is the agent's own loop (offline_trainer/evaluation/plans.py):
an agent with the `plan` policy and the budget goes through the profiling frames as a service
does (a start-up plan, its own time measured, a profiling window, a plan from the window's
figures with that time reserved), then runs its plan. On the committed fixture
(tests/data/digits3, TFLite models): no TensorFlow."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_config
from agent.planning import RUN, Action, Plan
from agent.scheduler import Agent
from links_tflite.recording import Recording
from offline_trainer.evaluation.methods import score_frames
from offline_trainer.evaluation.plans import profile_and_plan
from tests.conftest import LINKED_MODELS
from tests.support.contract import validate


def fixture_agent(root: Path, tmp_path: Path) -> Agent:
    models = "".join(f'\n[[models]]\nid = "{m}"\nadapter = "tflite"\n'
                     f'path = "{root / "models" / (m + ".tflite")}"\ninput = "image"\n'
                     f"timeout_ms = 0\n" for m in LINKED_MODELS)
    config = tmp_path / "agent.toml"
    config.write_text(f'device_id = "eval"\n[bundle]\npath = "{root / "bundle"}"\n'
                      f'[source]\ntype = "replay"\npath = "{root / "stream.npz"}"\n'
                      f'[selection]\npolicy = "exact"\n'
                      f"[profiling]\nwarmup_runs = 1\ndelay_runs = 5\nperiod_frames = 0\n"
                      + models)
    return Agent.from_config(load_config(config))


def test_the_plan_is_the_agents_own_after_a_window_with_its_time_reserved(
        digits_fixture, tmp_path: Path) -> None:
    agent = fixture_agent(digits_fixture.root, tmp_path)
    frames = list(agent.source.frames())
    agent.measure(frames[0])
    costs = agent.costs.snapshot()
    total = sum(c.get("delay_ms") for c in agent.model_costs.values())
    budget = {"delay_ms": 0.5 * total + 0.05}
    planned = profile_and_plan(agent, costs, budget, frames[:30], own_frames=10)
    loop = planned.agent
    assert loop is not agent and loop.executor is agent.executor  # its models, its own state
    assert loop.config.selection.policy == "plan" and loop.config.budget.delay_ms == budget[
        "delay_ms"] and loop.config.profiling.period_frames == 0
    # one window, over the 20 frames after the agent's own 10: reuse curves measured there
    assert loop.window.stats.windows == 1 and loop.window.stats.frames == 20
    assert set(loop.reuse_curves()) == set(LINKED_MODELS)
    summary = loop.window.online.summary()  # the window's figures in force, on 20 frames
    assert summary["figures_in_use"] == summary["figures"] > 0
    assert loop.counters.reselections == 1  # the window's end planned again
    plan = planned.selection.plan
    assert plan is not None and planned.selection is loop.selection
    assert planned.first.plan is not None  # the start-up plan, before the agent's own time
    # the agent's own time, measured on its 10 frames, is reserved out of the delay budget
    # (all of it, where that time is more than the budget: the models take microseconds)
    assert loop.reserved_ms == pytest.approx(min(loop.agent_ms(), budget["delay_ms"]))
    assert loop.reserved_ms > 0
    assert plan.use["delay_ms"] + loop.reserved_ms <= budget["delay_ms"] + 1e-9
    status = loop.status("running")
    validate("status", status)
    assert status["selection"]["agent_ms_reserved"] == round(loop.reserved_ms, 4)  # type: ignore[index]
    recording = Recording.load(digits_fixture.root / "stream.npz")
    exact = {m: recording.outputs[m][30:] for m in LINKED_MODELS}
    truth = {m: recording.ground_truth[m][30:] for m in LINKED_MODELS}
    scored = score_frames(loop, frames[30:], exact, truth)  # the test part: what it publishes
    assert 0.0 < scored.agreement <= 1.0 and 0.0 <= scored.accuracy <= 1.0
    assert scored.processed_share == 1.0 and scored.fallbacks == 0  # curves cover the ages
    assert loop.counters.reselections == 1  # no window, no re-plan in the test part
    agent.close()


def test_an_offline_plan_runs_in_place_of_the_agents_own(digits_fixture, tmp_path: Path) -> None:
    agent = fixture_agent(digits_fixture.root, tmp_path)
    frames = list(agent.source.frames())
    agent.measure(frames[0])
    every = Plan({m: Action(RUN) for m in LINKED_MODELS}, {}, 1.0)
    planned = profile_and_plan(agent, agent.costs.snapshot(), {"memory_mb": 1e-3}, frames[:20],
                               own_frames=5, offline=every)
    assert planned.selection.plan == every and planned.agent.selection is planned.selection
    assert planned.agent.window.stats.windows == 1
    executed = planned.agent.counters.executed
    for frame in frames[20:30]:  # every model runs on every frame, as that plan says
        planned.agent.process(frame)
    assert planned.agent.counters.executed - executed == len(LINKED_MODELS) * 10
    agent.close()
