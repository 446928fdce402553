"""Which delay figure a plan is made with on a busy box: the median of each model's recent
runs (what selection reads, agent.costs.CostStats) against the EMA it read before, side by
side on the same runs.

    .venv/bin/python benchmarks/delay_figures.py --build /work/build-city-edge
        # -> benchmarks/results/delay-figures.md

The city edge build's agent on its stream, as the evaluation's `plan` method runs it
(`offline_trainer.evaluation.plans.profile_and_plan`: the start-up plan, the agent's own time,
then a profiling window where every model runs, and a plan at its end). While it runs,
another process takes one core in bursts (busy `--busy-ms`, then idle `--idle-ms`): what other
work does to a shared box now and then. At the window's end the agent plans with the median
of each model's (and link's) recent runs; beside it, from the very same runs, the plan made
with their EMA (alpha 0.2, the former reading), at the same budget less the same reserve for
the agent's own time. Both are scored by the stream's test part's per-action figures
(`methods.plan_value`: what the plan would agree on the frames after the window), with the
plan made on a quiet box beside them. `--repeats` runs per budget.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.costs import Cost, CostStats
from agent.planning import Plan, plan_exact
from agent.scheduler import Agent
from offline_trainer.evaluation.methods import Evaluator, plan_value
from offline_trainer.evaluation.plans import profile_and_plan
from offline_trainer.evaluation.run import SHARES
from offline_trainer.evaluation.stream import evaluation_config, load_stream

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "delay-figures.md"
MODELS = ("persons", "traffic", "vehicles", "vehicle_box", "caption")
ALPHA = 0.2  # the former EMA's (ProfilingConfig.ema_alpha)


def hog(busy_s: float, idle_s: float, stop: multiprocessing.synchronize.Event) -> None:
    """One core taken in bursts until `stop`."""
    while not stop.is_set():
        end = time.perf_counter() + busy_s
        while time.perf_counter() < end:
            pass
        time.sleep(idle_s)


def ema(runs: tuple[float, ...]) -> float | None:
    value = None
    for ms in runs:
        value = ms if value is None else ALPHA * ms + (1 - ALPHA) * value
    return value


def by_ema(stats: CostStats) -> Cost:
    return Cost(stats.memory_mb, ema(stats.recent()))


def actions(plan: Plan) -> str:
    return ", ".join(f"{m} {a}" for m, a in plan.actions.items() if a.kind != "prior")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", type=Path, required=True, help="mlink-train evaluate --out")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--busy-ms", type=float, default=40.0)
    parser.add_argument("--idle-ms", type=float, default=160.0)
    args = parser.parse_args()
    agent = Agent.from_config(evaluation_config(args.build / "zoo", args.build / "bundle", MODELS))
    stream = load_stream(agent.config, MODELS, 0, 0.25)
    agent.measure(stream.calibration[0])
    evaluator = Evaluator(agent, stream)
    costs = agent.costs.snapshot()
    total = evaluator.total["delay_ms"]
    rows = []
    for share in SHARES:
        budget = {"delay_ms": share * total}
        quiet = profile_and_plan(agent, costs, budget, stream.calibration)
        assert quiet.selection.plan is not None
        quiet_plan = quiet.selection.plan
        agent.costs.restore(costs)
        for repeat in range(args.repeats):
            stop = multiprocessing.Event()
            busy = multiprocessing.Process(target=hog, daemon=True, args=(
                args.busy_ms / 1e3, args.idle_ms / 1e3, stop))
            busy.start()
            try:
                planned = profile_and_plan(agent, costs, budget, stream.calibration)
            finally:
                stop.set()
                busy.join()
            loop = planned.agent
            problem = loop.problem()
            problem = dataclasses.replace(problem, budget={
                "delay_ms": max(1e-9, budget["delay_ms"] - loop.reserved_ms)})
            median = plan_exact(problem)
            assert planned.selection.plan is not None
            assert median.actions == planned.selection.plan.actions  # the agent's own plan
            former = plan_exact(dataclasses.replace(
                problem,
                model_costs={m: by_ema(loop.costs.model(m)) for m in problem.model_costs},
                link_costs={p: by_ema(loop.costs.link(*p)) for p in problem.link_costs}))
            spread = max(max(loop.costs.model(m).recent()) / (loop.costs.model(m).delay_ms or 1)
                         for m in MODELS)
            rows.append({
                "share": share, "repeat": repeat, "reserved": loop.reserved_ms,
                "spread": spread,
                "quiet": (actions(quiet_plan), plan_value(quiet_plan, evaluator.tested)),
                "median": (actions(median), plan_value(median, evaluator.tested)),
                "ema": (actions(former), plan_value(former, evaluator.tested)),
                "median_ms": {m: loop.costs.model(m).delay_ms for m in MODELS},
                "ema_ms": {m: ema(loop.costs.model(m).recent()) for m in MODELS},
            })
            agent.costs.restore(costs)
            print(f"share {share:.2f} #{repeat}: median {rows[-1]['median'][1]:.3f} "
                  f"ema {rows[-1]['ema'][1]:.3f} quiet {rows[-1]['quiet'][1]:.3f}", flush=True)
    write(args, rows, costs_ms={m: c.get("delay_ms") for m, c in evaluator.costs.items()},
          total=total)


def write(args: argparse.Namespace, rows: list[dict], costs_ms: dict[str, float],
          total: float) -> None:
    lines = [
        "# Delay figures on a busy box: median against EMA",
        "",
        "Regenerate: `.venv/bin/python benchmarks/delay_figures.py --build "
        f"/work/build-city-edge --repeats {args.repeats} --busy-ms {args.busy_ms:g} "
        f"--idle-ms {args.idle_ms:g}` (the city edge build of `mlink-train evaluate "
        f"--workload city --model-size edge`). Machine: {platform.machine()}, "
        f"{platform.platform()}, Python {platform.python_version()}.",
        "",
        "The agent's loop as the evaluation's `plan` method runs it (start-up plan, own time, "
        "a profiling window where every model runs, a plan at its end) while another process "
        f"takes one core {args.busy_ms:g} ms in every {args.busy_ms + args.idle_ms:g} ms. The "
        "plan the agent made (the median of each model's recent runs) and, from the same runs, "
        "the plan their EMA (alpha 0.2, what selection read before) gives, at the same budget "
        "less the same reserve; each scored by the test part's per-action figures (what it "
        "would agree on the 900 frames after the window). *quiet*: the plan made with no "
        "other process. Models' delays measured on the quiet box at the start (ms): "
        + ", ".join(f"{m} {v:.2f}" for m, v in costs_ms.items()) + f"; total {total:.2f}.",
        "",
        "| budget | run | max run / median | median: plan | agreement | EMA: plan | "
        "agreement | quiet: agreement |",
        "| --- | ---: | ---: | --- | ---: | --- | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['share']:.2f} | {r['repeat']} | {r['spread']:.1f}x | {r['median'][0]} | "
            f"{r['median'][1]:.3f} | {r['ema'][0]} | {r['ema'][1]:.3f} | {r['quiet'][1]:.3f} |")
    lines += ["", "Mean over the runs at each budget:", "",
              "| budget | median | EMA | quiet | median = quiet plan | EMA = quiet plan |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for share in sorted({r["share"] for r in rows}):
        at = [r for r in rows if r["share"] == share]
        lines.append(
            f"| {share:.2f} | {np.mean([r['median'][1] for r in at]):.3f} | "
            f"{np.mean([r['ema'][1] for r in at]):.3f} | {at[0]['quiet'][1]:.3f} | "
            f"{sum(r['median'][0] == r['quiet'][0] for r in at)} of {len(at)} | "
            f"{sum(r['ema'][0] == r['quiet'][0] for r in at)} of {len(at)} |")
    RESULTS.write_text("\n".join(lines) + "\n")
    print(RESULTS)


if __name__ == "__main__":
    main()
