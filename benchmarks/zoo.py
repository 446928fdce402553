"""Builds both workloads' model zoos and writes their model cards as one table.

    .venv/bin/python benchmarks/zoo.py [--out build/zoo]

Writes benchmarks/results/zoo.md (and prints it): per model, task kind, parameters, file size,
measured single-frame delay and interpreter memory on this machine, ground-truth agreement on
held-out frames beside a trivial predictor's (majority class, mean box/count, most common
sequence).
"""

from __future__ import annotations

import argparse
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from offline_trainer.cards import card_table
from offline_trainer.zoo import build_zoo

RESULTS = Path(__file__).resolve().parent / "results" / "zoo.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("build/zoo"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sections = [
        "# Model zoo cards",
        "",
        f"Regenerate: `.venv/bin/python benchmarks/zoo.py` (seed {args.seed}). Measured "
        f"{datetime.now(timezone.utc):%Y-%m-%d} on {platform.machine()}, {os.cpu_count()} "
        "cores, LiteRT, 1 thread. Delay: median single-frame inference after a warm-up. "
        "Memory: RSS growth of loading the model and running it once. GT agreement: the "
        "agreement measure of the task against ground truth on the held-out recording split.",
    ]
    for workload in ("digits", "city"):
        zoo_dir = args.out / workload
        build_zoo(workload, zoo_dir, args.seed)
        sections += ["", f"## {workload}", "", card_table(zoo_dir)]
    text = "\n".join(sections) + "\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
