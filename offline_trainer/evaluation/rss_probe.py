"""The agent's resident memory on the evaluation stream, run in a fresh process, optionally
with TensorFlow imported first (what a process that runs models through TensorFlow pays).

    python -m offline_trainer.evaluation.rss_probe --zoo DIR --bundle DIR --models a,b \
        --frames N [--tensorflow]

Prints one JSON object: peak RSS (VmHWM: since exec, unlike ru_maxrss, which keeps the
forking parent's size) and current RSS in MB after the frames.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import psutil


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--zoo", type=Path, required=True)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--models", required=True)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--tensorflow", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.tensorflow:
        import tensorflow  # noqa: F401  (the point: what importing it costs)
    from agent.scheduler import Agent
    from agent.selection import get_policy
    from offline_trainer.evaluation.stream import evaluation_config

    models = tuple(args.models.split(","))
    agent = Agent.from_config(evaluation_config(args.zoo, args.bundle, models))
    frames = agent.source.frames()
    agent.measure(next(frames))
    total = sum(c.get("memory_mb") for c in agent.model_costs.values())
    agent.apply(get_policy("exact").select(agent.problem({"memory_mb": total * 2 / 3})))
    for _, frame in zip(range(args.frames), frames, strict=False):
        agent.process(frame)
    print(json.dumps({
        "tensorflow": args.tensorflow,
        "tensorflow_loaded": "tensorflow" in sys.modules,
        "peak_rss_mb": peak_rss_mb(),
        "rss_mb": psutil.Process().memory_info().rss / 2**20,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
