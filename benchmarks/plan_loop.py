"""The loop executing a plan (agent/timetable.py), on the committed digits fixture
(tests/data/digits3: three TFLite models, their links, 60 stream frames, looped): no
TensorFlow, no training.

    .venv/bin/python benchmarks/plan_loop.py         # -> benchmarks/results/plan-loop.md

1. Staggering: the plan digit `run`, parity `run/3`, inkbox `run/3` (the other models' output
   reused in between), its `run/3` turns at the offsets the timetable spreads, against both at
   offset 0: the models run per frame, and the delay per frame they are charged (the cost
   book's delay of each executed model, summed per frame: mean and max) beside the measured
   inference (median, p95; the fixture's models take microseconds, so one descheduling of
   this shared box is a frame's maximum).
2. The agent's own time per frame (the loop and the payloads, less the models' inference;
   `overhead.agent_ms_per_frame`) running all three models every frame, under `all` and under
   a plan that runs all three (the timetable's bookkeeping), and under the plan of 1: the
   median and the lowest of 5 runs.
3. The reuse curves a profiling window measures on the fixture's stream (consecutive frames
   of the replayed recording are unrelated digits: little to reuse, as the figures say).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config import load_config
from agent.output import Output, Payloads
from agent.planning import Action, Plan
from agent.scheduler import Agent
from agent.selection import Selection

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "data" / "digits3"
RESULTS = ROOT / "benchmarks" / "results" / "plan-loop.md"
MODELS = ("digit", "parity", "inkbox")


class Kept(Payloads):
    """The messages as usual; every frame's executed inference time kept."""

    def __init__(self, cameras: tuple[str, ...]) -> None:
        super().__init__(cameras)
        self.model_ms: list[float] = []
        self.runs: list[int] = []
        self.executed: list[list[str]] = []

    def make(self, frame, outputs, settings, specs):  # type: ignore[no-untyped-def]
        outputs = list(outputs)
        executed = [o for o in outputs if isinstance(o, Output) and o.executed]
        self.model_ms.append(sum(o.latency_ms for o in executed))
        self.runs.append(len(executed))
        self.executed.append([o.model for o in executed])
        return super().make(frame, outputs, settings, specs)


def config_file(folder: Path, policy: str, profiling: str) -> Path:
    models = "".join(f'\n[[models]]\nid = "{m}"\nadapter = "tflite"\n'
                     f'path = "{FIXTURE / "models" / (m + ".tflite")}"\ninput = "image"\n'
                     f"timeout_ms = 0\n" for m in MODELS)
    path = folder / f"{policy}.toml"
    path.write_text(f'device_id = "bench"\n[bundle]\npath = "{FIXTURE / "bundle"}"\n'
                    f'[source]\ntype = "replay"\npath = "{FIXTURE / "stream.npz"}"\nloop = true\n'
                    f'[selection]\npolicy = "{policy}"\n'
                    f"[profiling]\nwarmup_runs = 3\ndelay_runs = 20\n{profiling}\n" + models)
    return path


def run(folder: Path, frames: int, actions: dict[str, Action] | None,
        offsets: dict[str, int] | None = None, policy: str = "all",
        profiling: str = "period_frames = 0") -> tuple[Agent, Kept]:
    agent = Agent.from_config(load_config(config_file(folder, policy, profiling)))
    kept = Kept(agent.source.cameras)
    agent.payloads = kept
    stream = agent.start()
    if actions is not None:
        plan = Plan(actions, {}, 0.0)
        agent.apply(Selection("plan", plan.active, tuple(m for m in MODELS if m not in plan.active),
                              {}, 0.0, True, plan=plan))
        agent.timetable.curves = {m: (1.0,) * 15 for m in agent.timetable.periods}
        if offsets is not None:
            agent.timetable.offsets = dict(offsets)
    agent.overhead.__init__()  # type: ignore[misc]  # the loop's figures only
    for _ in range(frames):
        agent.process(next(stream))
    agent.close()
    return agent, kept


def figures(values: list[float]) -> str:
    return f"{statistics.median(values):.4f} | {float(np.percentile(values, 95)):.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=600)
    args = parser.parse_args()
    thirds = {"digit": Action("run"), "parity": Action("run", 3), "inkbox": Action("run", 3)}
    every = {m: Action("run") for m in MODELS}
    lines = ["# The loop executing a plan (digits fixture)", "",
             f"`.venv/bin/python benchmarks/plan_loop.py` on {platform.machine()}, "
             f"Python {platform.python_version()}, {args.frames} frames per run (the fixture's "
             "60 looped), models inline (`timeout_ms = 0`). Times in ms per frame.", ""]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = []
        agent, staggered = run(folder, args.frames, thirds)
        spread = dict(agent.timetable.offsets)
        delay = {m: c.get("delay_ms") for m, c in agent.model_costs.items()}
        _, together = run(folder, args.frames, thirds, {m: 0 for m in spread})
        rows.append(("staggered " + str(spread), staggered))
        rows.append(("both at offset 0", together))
        lines += ["## 1. Staggering `run/3` (digit run, parity and inkbox run/3)", "",
                  "Each model's delay in the cost book: "
                  + ", ".join(f"{m} {d:.4f}" for m, d in delay.items()) + ".", "",
                  "| offsets | models run per frame (frames) | charged mean | charged max | "
                  "inference median | p95 |", "| --- | --- | --- | --- | --- | --- |"]
        for name, kept in rows:
            counts = sorted(set(kept.runs))
            charged = [sum(delay[m] for m in ran) for ran in kept.executed]
            lines.append(f"| {name} | "
                         f"{', '.join(f'{c}: {kept.runs.count(c)}' for c in counts)} | "
                         f"{statistics.mean(charged):.4f} | {max(charged):.4f} | "
                         f"{figures(kept.model_ms)} |")
        lines += ["", "## 2. The agent's own time per frame", "",
                  "| run | agent ms per frame, median | lowest | models ms per frame, median |",
                  "| --- | --- | --- | --- |"]
        for name, actions, policy in (("`all` (every model every frame)", None, "all"),
                                      ("a plan running every model every frame", every, "all"),
                                      ("the plan of 1 (two models reused 2 frames in 3)",
                                       thirds, "all")):
            agents = [run(folder, args.frames, actions, policy=policy)[0] for _ in range(5)]
            own = [float(a.overhead.to_dict()["agent_ms_per_frame"] or 0.0) for a in agents]
            models = [float(a.overhead.to_dict()["models_ms_per_frame"] or 0.0) for a in agents]
            lines.append(f"| {name} | {statistics.median(own):.4f} | {min(own):.4f} | "
                         f"{statistics.median(models):.4f} |")
        agent, _ = run(folder, 24, None, policy="plan",
                       profiling="period_frames = 1000\nsample_frames = 20")
        lines += ["", "## 3. Reuse curves measured by a 20-frame window (policy `plan`)", "",
                  "| model | r(1), r(2), ... |", "| --- | --- |"]
        for model, curve in sorted(agent.reuse_curves().items()):
            lines.append(f"| {model} | {', '.join(f'{v:.3f}' for v in curve)} |")
        plan = agent.selection.plan if agent.selection else None
        lines += ["", "The plan made again with them (no budget): "
                  + (", ".join(f"{m} {a}" for m, a in plan.actions.items()) if plan else "none")
                  + "."]
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
