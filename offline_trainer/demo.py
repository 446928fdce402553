"""The main job, end to end on one machine: train the digits zoo and its links, start a local
Mosquitto, run the agent under the largest memory budget at which MLink predicts at least
three of the seven models, subscribe like a user would, score what arrived against the
models' exact outputs, and draw agreement and budget use per model (`demo.png`)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from agent.cli import measured_problem
from agent.config import load_config
from agent.selection import Selection, SelectionError, get_policy
from devtools.broker import LocalBroker
from devtools.subscriber import Collector
from links_tflite.agreement import mean_agreement
from links_tflite.bundle import MANIFEST
from links_tflite.recording import Recording
from offline_trainer.train_links import summary_table, train_bundle
from offline_trainer.workloads import get_workload
from offline_trainer.zoo import agent_config_text, build_zoo

log = logging.getLogger(__name__)

WORKLOAD = "digits"
POLICY = "exact"
PREDICTED_AT_LEAST = 3  # models the demo's budget leaves to be predicted


def _agent(args: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "agent", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr}")
    return result


def ensure_bundle(out: Path) -> None:
    bundle = out / "bundle"
    recording = out / "recording.npz"
    manifest = bundle / MANIFEST
    if manifest.exists() and manifest.stat().st_mtime >= recording.stat().st_mtime:
        print(f"bundle {bundle} is up to date")
        return
    results = train_bundle(recording, bundle)
    print(summary_table(results))


def predicting_budget(out: Path, port: int, recipes: list | None = None,
                      least: int = PREDICTED_AT_LEAST) -> tuple[float, Selection]:
    """The largest memory budget, in steps of 1% of the models' memory as this box measures
    it, at which `exact` predicts at least `least` models through their links — what MLink
    exists for — and its selection. Where none does, half the models' memory."""
    probe = out / "agent-probe.toml"
    recipes = get_workload(WORKLOAD).recipes() if recipes is None else recipes
    probe.write_text(agent_config_text(WORKLOAD, recipes, port, policy=POLICY))
    agent, problem = measured_problem(load_config(probe))
    try:
        total = sum(c.get("memory_mb") for c in problem.model_costs.values())
        fallback: tuple[float, Selection] | None = None
        for percent in range(95, 0, -1):  # 1% steps: the window where links pay is narrow
            budget = max(total * percent / 100, 1e-3)
            try:
                selection = get_policy(POLICY).select(replace(problem,
                                                              budget={"memory_mb": budget}))
            except SelectionError:
                continue
            if percent == 50:
                fallback = (budget, selection)
            if selection.uses_links and len(selection.predicted) >= least:
                # predicted through links, not left to priors. The budget is the set's own
                # use plus half the cheapest model it leaves out: memory measured in another
                # process differs by tenths of a MB, and a looser budget would let the agent
                # run one more model than chosen here
                spare = min(problem.model_costs[m].get("memory_mb") for m in selection.predicted)
                return min(budget, selection.use["memory_mb"] + spare / 2), selection
        if fallback is None:
            raise RuntimeError(f"no memory budget fits a model of {WORKLOAD}")
        return fallback
    finally:
        agent.close()


def memory_use(row: dict[str, Any], costs: dict[str, Any]) -> float:
    """What a model's output took of the memory budget: the model where it ran, the links
    from its sources where it was predicted."""
    if row["provenance"] == "executed":
        return float(costs["models"][row["model"]]["memory_mb"] or 0.0)
    return sum(float(costs["links"].get(f"{s}->{row['model']}", {}).get("memory_mb") or 0.0)
               for s in str(row.get("sources", "")).split(",") if s)


def plot(table: list[dict[str, Any]], costs: dict[str, Any], budget_mb: float,
         path: Path) -> Path:
    """Agreement and memory use per model, coloured by provenance, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"executed": "tab:blue", "predicted": "tab:orange", "prior": "tab:green"}
    models = [row["model"] for row in table]
    colour = [colours.get(row["provenance"], "tab:gray") for row in table]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.bar(models, [row.get("agreement", 0.0) for row in table], color=colour)
    left.set_ylim(0, 1.05)
    left.set_ylabel("agreement with the model's own output")
    use = [memory_use(row, costs) for row in table]
    right.bar(models, use, color=colour)
    right.set_ylabel("memory taken of the budget (MB)")
    right.set_title(f"budget {budget_mb:.2f} MB, used {sum(use):.2f} MB")
    for axis in (left, right):
        axis.tick_params(axis="x", rotation=45)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
    left.legend(handles, list(colours), loc="upper center", bbox_to_anchor=(0.5, -0.22),
                ncol=len(colours), frameon=False)
    figure.suptitle(f"MLink Edge demo: {WORKLOAD}, what a subscriber received")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def score(collected: list[dict[str, Any]], stream: Recording) -> list[dict[str, Any]]:
    row_of = {int(f): i for i, f in enumerate(stream.frame_ids)}
    table = []
    for model_id, spec in stream.tasks.items():
        mine = [o for o in collected if o["model"] == model_id and o["value"] is not None]
        if not mine:
            table.append({"model": model_id, "provenance": "none", "messages": 0})
            continue
        rows = [row_of[o["frame_id"]] for o in mine]
        values = np.asarray([o["value"] for o in mine], dtype=np.float32)
        table.append({
            "model": model_id,
            "provenance": "/".join(sorted({o["provenance"] for o in mine})),
            "messages": len(mine),
            "agreement": mean_agreement(spec, values, stream.outputs[model_id][rows]),
            "sources": ",".join(sorted({s for o in mine for s in o["sources"]})),
        })
    return table


def format_table(table: list[dict[str, Any]], fps: float | None, budget_mb: float) -> str:
    lines = [f"{'model':<10}{'provenance':<12}{'sources':<16}{'messages':>9}{'agreement':>11}"]
    for row in table:
        agreement = f"{row['agreement']:.3f}" if "agreement" in row else "-"
        lines.append(f"{row['model']:<10}{row['provenance']:<12}{row.get('sources', ''):<16}"
                     f"{row['messages']:>9}{agreement:>11}")
    scored = [row["agreement"] for row in table if "agreement" in row]
    lines.append(f"mean agreement over all models: {np.mean(scored) if scored else 0.0:.3f}; "
                 f"memory budget {budget_mb:.2f} MB; agent throughput {fps or 0.0:.1f} frames/s")
    return "\n".join(lines)


def run_demo(out: Path, seed: int = 0) -> list[dict[str, Any]]:
    out.mkdir(parents=True, exist_ok=True)
    print(f"[1/4] model zoo and recording -> {out}")
    build_zoo(WORKLOAD, out, seed)
    print("[2/4] links: train, int8-quantize, profile")
    ensure_bundle(out)
    stream = Recording.load(out / "stream.npz")
    with LocalBroker() as broker:
        print(f"[3/4] local Mosquitto on 127.0.0.1:{broker.port}; measuring costs")
        budget, selection = predicting_budget(out, broker.port)
        config = out / "agent-demo.toml"
        config.write_text(agent_config_text(WORKLOAD, get_workload(WORKLOAD).recipes(),
                                            broker.port, budget, policy=POLICY))
        collector = Collector("127.0.0.1", broker.port, "mlink", f"{WORKLOAD}-demo").start()
        print(f"[4/4] agent on {len(stream)} frames under {budget:.2f} MB: runs "
              f"{', '.join(sorted(selection.active))}; predicts "
              f"{', '.join(selection.predicted)}")
        _agent(["run", "--config", str(config)], 600)
        collector.wait_for_outputs(len(stream) * len(stream.tasks), timeout_s=10)
        collector.stop()
    status = collector.status or {}
    table = score(collector.snapshot(), stream)
    if status.get("selection"):
        print(f"selection: {json.dumps(status['selection'])}")
    overhead = status.get("overhead")
    if overhead:
        print(f"per frame: executed models {overhead['models_ms_per_frame']:.3f} ms, the "
              f"agent's own work {overhead['agent_ms_per_frame']:.3f} ms (these digit models "
              "take microseconds; benchmarks/results/selection.md has edge-size figures)")
    if collector.costs:
        print(f"picture: {plot(table, collector.costs, budget, out / 'demo.png')}")
    print(format_table(table, status.get("fps"), budget))
    return table
