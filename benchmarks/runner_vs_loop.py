"""The evaluation's former runner of plans against the agent's loop, on the same plans, in
one run: do the figures the evaluation published before the loop ran plans hold in the loop?

    .venv/bin/python benchmarks/runner_vs_loop.py --build /work/build-city-edge
        # -> benchmarks/results/runner-vs-loop.md

The former runner (`offline_trainer/evaluation/plans.py` at commit RUNNER_COMMIT, written
before `agent.scheduler.Agent` executed plans) is read from git history, not kept in the
code. At each budget of the evaluation, the plan `plan_exact` makes from the per-action
figures measured on the stream's profiling part (the former `plan` method: the agent's own
fixed work, measured with every model running, taken off a delay budget) runs twice on the
test part: through the former runner (its lead: the last 16 frames of each camera), and
through the loop (`evaluation.plans.profile_and_plan(offline=plan)`: the same profiling part
as the evaluation's `plan` method, then that plan). Agreement against every model's exact
output; fall-backs: reuse the loop's timetable could not serve.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.output import model_entries
from agent.planning import plan_exact
from agent.scheduler import Agent
from agent.selection import get_policy
from links_tflite.recording import Recording
from offline_trainer.evaluation.actions import MAX_AGE
from offline_trainer.evaluation.methods import Evaluator, _score, score_frames
from offline_trainer.evaluation.plans import profile_and_plan
from offline_trainer.evaluation.run import SHARES
from offline_trainer.evaluation.stream import evaluation_config, load_stream

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "runner-vs-loop.md"
RUNNER_COMMIT = "da29411"


def former_runner():  # type: ignore[no-untyped-def]
    source = subprocess.run(["git", "show", f"{RUNNER_COMMIT}:offline_trainer/evaluation/plans.py"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "former_plans.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("former_plans", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def own_work_ms(agent: Agent, frames: list) -> float:  # type: ignore[type-arg]
    """The former reserve: the median wall time less the models' with every model running."""
    agent.apply(get_policy("all").select(agent.problem({})))
    for frame in frames[:5]:
        agent.process(frame)
    own = []
    for frame in frames:
        start = time.perf_counter()
        payloads = model_entries(agent.process(frame))
        own.append((time.perf_counter() - start) * 1e3 - sum(
            float(p["latency_ms"]) for p in payloads if p["provenance"] == "executed"))
    return max(0.0, float(np.median(own)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", type=Path, required=True)
    args = parser.parse_args()
    runner = former_runner()
    models = tuple(Recording.load(args.build / "recording.npz").models)
    agent = Agent.from_config(evaluation_config(args.build / "zoo", args.build / "bundle",
                                                models))
    stream = load_stream(agent.config, models, 0, 0.25)
    agent.measure(stream.calibration[0])
    evaluator = Evaluator(agent, stream)
    costs = agent.costs.snapshot()
    own = own_work_ms(agent, stream.calibration)
    agent.costs.restore(costs)
    lines = ["# The evaluation's former runner of plans against the agent's loop", "",
             f"`.venv/bin/python benchmarks/runner_vs_loop.py --build {args.build}` on "
             f"{platform.machine()}, Python {platform.python_version()}: "
             f"{len(stream.calibration)} profiling frames, {len(stream.test)} test frames. "
             "What is measured how: the script's docstring. The former reserve for the "
             f"agent's own work: {own:.3f} ms a frame.", "",
             "| budget | plan | expected | former runner | loop | loop - former | "
             "fall-backs | former ms/frame | loop ms/frame |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    delays = {m: c.get("delay_ms") for m, c in evaluator.costs.items()}
    lead = stream.calibration[-MAX_AGE * len(agent.source.cameras):]
    for resource in ("memory_mb", "delay_ms"):
        for share in SHARES:
            budget = share * evaluator.total[resource]
            planned_budget = max(1e-9, budget - own) if resource == "delay_ms" else budget
            plan = plan_exact(evaluator.profiled.problem(evaluator.problem({}),
                                                         {resource: planned_budget}))
            ran = runner.run_plan(agent, stream.test, plan, delays, lead)
            former = _score(agent, ran.values, stream.exact)
            agent.costs.restore(costs)
            loop = profile_and_plan(agent, costs, {resource: budget}, stream.calibration,
                                    offline=plan).agent
            scored = score_frames(loop, stream.test, stream.exact, stream.truth)
            agent.costs.restore(costs)
            actions = ", ".join(f"{m} {a}" for m, a in sorted(plan.actions.items()))
            lines.append(f"| {resource} {share:.2f} | {actions} | {plan.expected_agreement:.3f} "
                         f"| {former:.4f} | {scored.agreement:.4f} | "
                         f"{scored.agreement - former:+.4f} | {scored.fallbacks} | "
                         f"{ran.ms_per_frame:.3f} | {scored.ms_per_frame:.3f} |")
            print(lines[-1], flush=True)
    agent.close()
    RESULTS.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
