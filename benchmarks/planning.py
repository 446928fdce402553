"""Planning over actions (agent/planning.py) on synthetic instances: how long `plan_exact`
and `plan_greedy` take, and what the action space is worth against today's policies.

    .venv/bin/python benchmarks/planning.py          # -> benchmarks/results/planning.md

Instances: k models with random costs (memory 0.5-10 MB, delay 0.1-5 ms), links (0-0.3 MB,
0-0.1 ms), pairwise link agreement and figures for 40 sampled subsets per target, a prior for
80% of the models (agreement 0-0.7), a reuse curve for 60% (r(a) = r0 * d^a, r0 in 0.3-1,
d in 0.7-1), and a memory or delay budget of a random share (1/6 to 2/3) of the models' total.
The comparison: `exact` over run/predict (today's policy), `standalone` + the prior for the
rest, `plan_greedy` and `plan_exact` over every action; mean expected agreement.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.costs import Cost
from agent.planning import plan_exact, plan_greedy
from agent.selection import Problem, SelectionError, get_policy
from links_tflite.bundle import Profile

RESULTS = Path(__file__).resolve().parent / "results" / "planning.md"


def instance(rng: np.random.Generator, k: int, resource: str, share: float) -> Problem:
    models = tuple(f"m{i}" for i in range(k))
    pairwise = {t: {s: float(rng.random()) for s in models if s != t and rng.random() < 0.85}
                for t in models}
    ensembles = {t: {frozenset(rng.choice(sorted(pairwise[t]), size=int(rng.integers(
                     2, min(6, len(pairwise[t])) + 1)), replace=False)): float(rng.random())
                     for _ in range(40)} for t in models if len(pairwise[t]) >= 2}
    costs = {m: Cost(float(rng.uniform(0.5, 10)), float(rng.uniform(0.1, 5))) for m in models}
    total = sum(c.get(resource) for c in costs.values())
    reuse = {}
    for m in models:
        if rng.random() < 0.6:
            start, decay = rng.uniform(0.3, 1.0), rng.uniform(0.7, 1.0)
            reuse[m] = tuple(float(start * decay ** a) for a in range(1, 16))
    return Problem(
        models=models, model_costs=costs,
        link_costs={(s, t): Cost(float(rng.uniform(0, 0.3)), float(rng.uniform(0, 0.1)))
                    for s, t in itertools.permutations(models, 2) if s in pairwise[t]},
        profile=Profile(pairwise=pairwise, ensembles=ensembles),
        budget={resource: total * share},
        priors={m: float(rng.uniform(0, 0.7)) for m in models if rng.random() < 0.8},
        reuse=reuse)


def timed(function, problem: Problem) -> float:
    start = time.perf_counter()
    function(problem)
    return (time.perf_counter() - start) * 1e3


def with_prior(problem: Problem, policy: str) -> float:
    """A run/predict policy's set, the prior served for every model it leaves without an
    output (what a user gets from today's agent plus the priors)."""
    try:
        chosen = get_policy(policy).select(problem)
    except SelectionError:
        return sum(problem.priors.values()) / problem.k
    predicted = 0.0
    for m in problem.models:
        if m in chosen.active:
            continue
        linked = problem.profile.ensemble_agreement(m, chosen.active) if chosen.uses_links else 0
        predicted += max(linked, problem.priors.get(m, 0.0))
    return (len(chosen.active) + predicted) / problem.k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=60)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    lines = ["# Planning over actions", "",
             f"`.venv/bin/python benchmarks/planning.py --instances {args.instances}` on "
             f"{platform.machine()}, Python {platform.python_version()}, single-threaded; "
             "instances as the script's docstring says.", "",
             "## Time per plan (ms)", "",
             "| planner | k | instances | median | max |", "|---|---|---|---|---|"]
    for name, function, k in [("plan_exact", plan_exact, 8), ("plan_exact", plan_exact, 12),
                              ("plan_exact", plan_exact, 16),
                              ("plan_greedy", plan_greedy, 64),
                              ("activation (today)", get_policy("activation").select, 64)]:
        times = [timed(function, instance(rng, k, ("memory_mb", "delay_ms")[i % 2],
                                          float(rng.uniform(1 / 6, 2 / 3))))
                 for i in range(args.instances if k <= 12 else max(args.instances // 4, 5))]
        lines.append(f"| {name} | {k} | {len(times)} | {statistics.median(times):.2f} | "
                     f"{max(times):.2f} |")
    lines += ["", "## Mean expected agreement, k = 10", "",
              "| budget | share | exact run/predict + prior | standalone + prior | plan_greedy | "
              "plan_exact |", "|---|---|---|---|---|---|"]
    for resource, share in itertools.product(("memory_mb", "delay_ms"),
                                             (1 / 6, 1 / 3, 1 / 2, 2 / 3)):
        rows = [instance(rng, 10, resource, share) for _ in range(args.instances // 2)]
        figures = [statistics.mean(f(p) for p in rows) for f in (
            lambda p: with_prior(p, "exact"), lambda p: with_prior(p, "standalone"),
            lambda p: plan_greedy(p).expected_agreement,
            lambda p: plan_exact(p).expected_agreement)]
        lines.append(f"| {resource} | {share:.2f} | " + " | ".join(f"{x:.3f}" for x in figures)
                     + " |")
    lines += ["", "Under a memory budget `run/p` saves nothing (the model stays loaded): the "
              "gain there is predicting or serving the prior per model. Under a delay budget "
              "`run/p` pays a share of a model's delay for most of its agreement where its "
              "output changes slowly."]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
