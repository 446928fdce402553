"""The main job, end to end on one machine: train the digits zoo and its links, start a local
Mosquitto, run the agent under a memory budget that fits about half of the models, subscribe
like a user would, and score what arrived against the models' exact outputs."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

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
BUDGET_SHARE = 0.5  # of the summed measured model memory


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


def measured_budget(out: Path, port: int, recipes: list | None = None) -> float:
    """Half the summed model memory as this box measures it (via `mlink-agent select`)."""
    probe = out / "agent-probe.toml"
    recipes = get_workload(WORKLOAD).recipes() if recipes is None else recipes
    probe.write_text(agent_config_text(WORKLOAD, recipes, port))
    costs = json.loads(_agent(["select", "--config", str(probe), "--json"], 300).stdout)["costs"]
    total = sum(c["memory_mb"] or 0.0 for c in costs["models"].values())
    return max(total * BUDGET_SHARE, 1e-3)


def score(collected: list[dict[str, Any]], stream: Recording) -> list[dict[str, Any]]:
    row_of = {int(f): i for i, f in enumerate(stream.frame_ids)}
    table = []
    for model_id, spec in stream.tasks.items():
        mine = [o for o in collected if o["model"] == model_id]
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
        budget = measured_budget(out, broker.port)
        config = out / "agent-demo.toml"
        config.write_text(agent_config_text(WORKLOAD, get_workload(WORKLOAD).recipes(),
                                            broker.port, budget))
        collector = Collector("127.0.0.1", broker.port, "mlink", f"{WORKLOAD}-demo").start()
        print(f"[4/4] agent on {len(stream)} frames under {budget:.2f} MB")
        _agent(["run", "--config", str(config)], 600)
        collector.wait_for_outputs(len(stream) * len(stream.tasks), timeout_s=10)
        collector.stop()
    status = collector.status or {}
    table = score(collector.snapshot(), stream)
    print(format_table(table, status.get("fps"), budget))
    if status.get("selection"):
        print(f"selection: {json.dumps(status['selection'])}")
    overhead = status.get("overhead")
    if overhead:
        print(f"per frame: executed models {overhead['models_ms_per_frame']:.3f} ms, the "
              f"agent's own work {overhead['agent_ms_per_frame']:.3f} ms (these digit models "
              "take microseconds; benchmarks/results/selection.md has edge-size figures)")
    return table
