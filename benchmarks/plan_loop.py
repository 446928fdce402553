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
4. `exact` against `plan` on the same problem (one agent: its costs measured once, the
   profile after its first window), each applied in turn to the stream: the agreement
   measured against every model's exact output (0 where a model gets no output) beside the
   expected, under delay and memory budgets of 1/3 and 2/3 of the models' total.
   `--build DIR` runs it on another build's `agent.toml` as well (e.g. the digits demo's
   seven models, `build/demo`).
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

from agent.config import AgentConfig, load_config
from agent.output import Output, Payloads
from agent.planning import Action, Plan
from agent.scheduler import Agent
from agent.selection import Selection, get_policy
from links_tflite.agreement import agreement
from links_tflite.recording import Recording

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "data" / "digits3"
RESULTS = ROOT / "benchmarks" / "results" / "plan-loop.md"
MODELS = ("digit", "parity", "inkbox")
NOTE = ("Both methods of a row pair share one measurement of the costs and the profile after "
        "one 20-frame window; the models take microseconds, so the measured delays (and the "
        "delay budgets, shares of their total) move from run to run. `exact`'s expected figure "
        "leaves out the priors the loop serves for the models it neither runs nor predicts; "
        "its measured one includes them.")


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


def compare(config: AgentConfig, frames: int) -> list[str]:
    """Section 4 on one config: exact and plan on the same measured problem."""
    def agent_for(budget: dict[str, float | None], period: int) -> tuple[Agent, object]:
        settings = config.model_copy(update={
            "selection": config.selection.model_copy(update={"policy": "plan"}),
            "budget": config.budget.model_copy(update=budget),
            "profiling": config.profiling.model_copy(update={"period_frames": period,
                                                             "sample_frames": 20}),
            "source": config.source.model_copy(update={"fps": 0.0, "loop": True})})
        agent = Agent.from_config(settings)
        return agent, agent.start()

    def collect(agent: Agent, stream, n: int) -> dict[tuple[int, str], np.ndarray]:  # type: ignore[no-untyped-def]
        out = {}
        for _ in range(n):
            for p in agent.process(next(stream)):
                out[(int(p["frame_id"]) % length, str(p["model"]))] = np.array(p["value"])
        return out

    assert config.source is not None
    length = len(Recording.load(Path(config.source.path)))  # type: ignore[union-attr]
    agent, stream = agent_for({"memory_mb": None, "delay_ms": None}, 0)
    exact = collect(agent, stream, length)  # every model runs: their exact outputs
    specs = agent.bundle.models
    totals = {r: sum(c.get(r) for c in agent.model_costs.values())
              for r in ("memory_mb", "delay_ms")}
    agent.close()

    def score(out: dict[tuple[int, str], np.ndarray]) -> float:
        return statistics.mean(
            float(agreement(specs[k[1]], out[k][None], v[None])[0]) if k in out else 0.0
            for k, v in exact.items())

    lines = [f"Models' total: delay {totals['delay_ms']:.4f} ms, memory "
             f"{totals['memory_mb']:.3f} MB; {frames} frames per method.", "",
             "| budget | method | measured | expected | use | actions |",
             "| --- | --- | --- | --- | --- | --- |"]
    for resource in ("delay_ms", "memory_mb"):
        for share in (1 / 3, 2 / 3):
            budget: dict[str, float | None] = {"memory_mb": None, "delay_ms": None,
                                               resource: totals[resource] * share}
            agent, stream = agent_for(budget, 1000)
            collect(agent, stream, 20)  # the first window: reuse curves, online figures
            problem = agent.problem()
            for name in ("exact", "plan"):
                selection = get_policy(name).select(problem)
                agent.apply(selection)
                measured = score(collect(agent, stream, frames))
                actions = (", ".join(f"{m} {a}" for m, a in selection.plan.actions.items())
                           if selection.plan else "run " + ", ".join(sorted(selection.active)))
                lines.append(f"| {resource} {share:.2f} | {name} | {measured:.3f} | "
                             f"{selection.expected_agreement:.3f} | "
                             f"{selection.use.get(resource, 0.0):.4f} | {actions} |")
            agent.close()
    return lines


def figures(values: list[float]) -> str:
    return f"{statistics.median(values):.4f} | {float(np.percentile(values, 95)):.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--build", type=Path, default=None,
                        help="also compare exact and plan on this build's agent.toml")
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
        lines += ["", "## 4. `exact` against `plan` on the same problem", "", NOTE, "",
                  "The digits fixture (three models):", ""]
        lines += compare(load_config(config_file(folder, "plan", "period_frames = 0")),
                         args.frames // 2)
        if args.build is not None:
            lines += ["", f"`--build {args.build}` ({args.build / 'agent.toml'}):", ""]
            lines += compare(load_config(args.build / "agent.toml"), args.frames // 2)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
