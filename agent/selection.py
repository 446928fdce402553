"""Budgeted selection of the activated models.

Objective (DESIGN): maximise (1/k)(|A| + sum_{j not in A} p_j(h_{A,j})) subject to, for each
budgeted resource, sum_{i in A} c(f_i) + sum_{j not in A} c(h_{A,j}) <= B. The cost of an
ensemble h_{A,j} is the sum of the costs of its links from the activated sources.

Policies are small classes behind one interface, registered by name:
- `activation`: the paper's rule. P_i = (1 + P1_i - P2_i) / (w c_i), w = 2 / min c, where P1_i
  is the mean agreement of i's links into the others (how well i predicts them), P2_i the mean
  agreement of the others' links into i (how well i is predicted). Greedy by P_i, skipping a
  model whose addition breaks a budget; stop rule: every model has been considered once.
  With two budgets, c_i is the sum of i's shares of each budget. A cost of 0 is floored at
  1e-3 of the largest cost so that P_i stays finite.
- `exact`: the best activated set the profile allows. Every subset of the candidate models is
  scored at once with numpy (bitmask rows): model costs summed by matrix product, link costs
  as sum_{i in A, j not in A} c(g_ij), and p_j(h_{A,j}) looked up per target in a table indexed
  by the bitmask of A's usable sources (the profile's per-subset ensemble figure, falling
  back to the best single link as `Profile.ensemble_agreement` does). Subsets whose model
  costs alone break a budget are pruned before the link and agreement terms are computed
  (model costs are a lower bound of the use). 2^k rows: about 10 ms at k = 12, well under a
  second at k = 16; refused above `EXACT_MAX_MODELS` candidates with a clear error.
  Ties are broken towards the cheaper set (sum of budget shares), then the lower bitmask.
- `standalone`: the baseline without links: cheapest first while it fits; the rest get no output.
- `all`: every available model, ignoring the budget.

Models in `Problem.unavailable` (failed, backing off) are never activated by any policy; they
stay targets, predicted from the others.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from agent.costs import Cost
from links_tflite.bundle import Profile

log = logging.getLogger(__name__)

RESOURCES = ("memory_mb", "delay_ms")
EXACT_MAX_MODELS = 20  # 2^20 rows of a few bytes each: ~100 MB of scratch at most


class SelectionError(RuntimeError):
    """No activated set satisfies the budget."""


@dataclass(frozen=True)
class Problem:
    models: tuple[str, ...]
    model_costs: dict[str, Cost]
    link_costs: dict[tuple[str, str], Cost]
    profile: Profile
    budget: dict[str, float] = field(default_factory=dict)  # resource -> limit
    unavailable: frozenset[str] = frozenset()  # failed models: never activated, still predicted

    @property
    def k(self) -> int:
        return len(self.models)

    @property
    def candidates(self) -> tuple[str, ...]:
        """The models a policy may activate."""
        return tuple(m for m in self.models if m not in self.unavailable)

    def ensemble_sources(self, active: frozenset[str], target: str) -> list[str]:
        return [s for s in sorted(active) if (s, target) in self.link_costs]

    def use(self, active: frozenset[str], with_links: bool = True) -> dict[str, float]:
        """What the activated set costs in each resource, links for the others included."""
        totals = {}
        for resource in RESOURCES:
            total = sum(self.model_costs[m].get(resource) for m in active)
            if with_links:
                for target in self.models:
                    if target not in active:
                        total += sum(
                            self.link_costs[(s, target)].get(resource)
                            for s in self.ensemble_sources(active, target)
                        )
            totals[resource] = total
        return totals

    def fits(self, active: frozenset[str], with_links: bool = True) -> bool:
        use = self.use(active, with_links)
        return all(use[r] <= limit + 1e-12 for r, limit in self.budget.items())

    def expected_agreement(self, active: frozenset[str], with_links: bool = True) -> float:
        if not self.models:
            return 0.0
        predicted = 0.0
        if with_links:
            predicted = sum(
                self.profile.ensemble_agreement(j, active) for j in self.models if j not in active
            )
        return (len(active) + predicted) / self.k


@dataclass(frozen=True)
class Selection:
    policy: str
    active: frozenset[str]
    predicted: tuple[str, ...]
    use: dict[str, float]
    expected_agreement: float
    uses_links: bool

    def to_dict(self) -> dict[str, object]:
        return {
            "policy": self.policy,
            "active": sorted(self.active),
            "predicted": list(self.predicted),
            "use": self.use,
            "expected_agreement": self.expected_agreement,
        }


class Policy:
    name: ClassVar[str]
    uses_links: ClassVar[bool] = True

    def choose(self, problem: Problem) -> frozenset[str]:
        raise NotImplementedError

    def select(self, problem: Problem) -> Selection:
        active = self.choose(problem)
        if active & problem.unavailable:
            raise AssertionError(f"policy {self.name} activated unavailable models")
        if not active:
            if not problem.candidates:
                raise SelectionError(f"policy {self.name}: every model is unavailable "
                                     f"({sorted(problem.unavailable)})")
            cheapest = {r: min(problem.model_costs[m].get(r) for m in problem.candidates)
                        for r in problem.budget}
            raise SelectionError(
                f"policy {self.name}: no model fits the budget {problem.budget} "
                f"(cheapest model alone needs {cheapest})"
            )
        return Selection(
            policy=self.name,
            active=active,
            predicted=tuple(m for m in problem.models if m not in active),
            use=problem.use(active, self.uses_links),
            expected_agreement=problem.expected_agreement(active, self.uses_links),
            uses_links=self.uses_links,
        )


def scalar_costs(problem: Problem) -> dict[str, float]:
    """One cost per model: its share of each budget, summed (delay if no budget is set)."""
    budget = problem.budget or {"delay_ms": 1.0}
    raw = {
        m: sum(problem.model_costs[m].get(r) / limit for r, limit in budget.items())
        for m in problem.models
    }
    floor = max(max(raw.values(), default=0.0) * 1e-3, 1e-12)
    return {m: max(c, floor) for m, c in raw.items()}


def activation_scores(problem: Problem) -> dict[str, float]:
    """The paper's activation probability P_i for every model."""
    costs = scalar_costs(problem)
    w = 2.0 / min(costs.values())
    scores = {}
    for i in problem.models:
        others = [j for j in problem.models if j != i]
        p1 = sum(problem.profile.link_agreement(i, j) for j in others) / max(len(others), 1)
        p2 = sum(problem.profile.link_agreement(j, i) for j in others) / max(len(others), 1)
        scores[i] = (1.0 + p1 - p2) / (w * costs[i])
    return scores


def greedy(problem: Problem, order: Iterable[str], with_links: bool) -> frozenset[str]:
    active: frozenset[str] = frozenset()
    for model in order:
        if model in problem.unavailable:
            continue
        candidate = active | {model}
        if problem.fits(candidate, with_links):
            active = candidate
    return active


class ActivationPolicy(Policy):
    name: ClassVar[str] = "activation"

    def choose(self, problem: Problem) -> frozenset[str]:
        scores = activation_scores(problem)
        order = sorted(problem.models, key=lambda m: (-scores[m], m))
        return greedy(problem, order, with_links=True)


class StandalonePolicy(Policy):
    name: ClassVar[str] = "standalone"
    uses_links: ClassVar[bool] = False

    def choose(self, problem: Problem) -> frozenset[str]:
        costs = scalar_costs(problem)
        return greedy(problem, sorted(problem.models, key=lambda m: (costs[m], m)), False)


class AllPolicy(Policy):
    """Every available model; a failed one is predicted through the links."""

    name: ClassVar[str] = "all"

    def choose(self, problem: Problem) -> frozenset[str]:
        return frozenset(problem.candidates)


def _agreement_table(problem: Problem, target: str, usable: list[str]) -> np.ndarray:
    """p_target(h_{S,target}) for every subset S of `usable`, indexed by S's bitmask over
    `usable`: the best single link where the profile has no figure for S, as
    `Profile.ensemble_agreement` does; index 0 (no source) scores 0."""
    n = len(usable)
    subs = np.arange(1 << n, dtype=np.int64)
    single = np.array([problem.profile.link_agreement(s, target) for s in usable])
    if n:
        member = ((subs[:, None] >> np.arange(n)) & 1).astype(bool)
        table = np.where(member, single[None, :], -np.inf).max(axis=1)
        table[0] = 0.0
    else:
        table = np.zeros(1)
    position = {s: b for b, s in enumerate(usable)}
    for sources, value in problem.profile.ensembles.get(target, {}).items():
        if sources and all(s in position for s in sources):
            table[sum(1 << position[s] for s in sources)] = value
    return table


def exact_best(problem: Problem) -> frozenset[str]:
    """The feasible non-empty activated set with the highest expected agreement."""
    candidates = list(problem.candidates)
    n = len(candidates)
    if n == 0:
        return frozenset()
    if n > EXACT_MAX_MODELS:
        raise SelectionError(f"policy exact: {n} candidate models; it enumerates 2^k subsets and "
                             f"is limited to k <= {EXACT_MAX_MODELS}: use `activation`")
    masks = np.arange(1, 1 << n, dtype=np.int64)
    bits = ((masks[:, None] >> np.arange(n)) & 1).astype(np.float64)  # rows: subsets
    budget = dict(problem.budget)
    model_cost = {r: np.array([problem.model_costs[m].get(r) for m in candidates])
                  for r in RESOURCES}
    # prune: a subset whose models alone break a budget cannot fit once links are added
    keep = np.ones(len(masks), dtype=bool)
    for r, limit in budget.items():
        keep &= bits @ model_cost[r] <= limit + 1e-12
    masks, bits = masks[keep], bits[keep]
    if not len(masks):
        return frozenset()
    index = {m: i for i, m in enumerate(candidates)}
    # predicted[:, j] = 1 where model j (over all models) is not activated
    predicted = np.ones((len(masks), problem.k))
    for j, model in enumerate(problem.models):
        if model in index:
            predicted[:, j] = 1.0 - bits[:, index[model]]
    use = {}
    for r in RESOURCES:
        links = np.zeros((n, problem.k))
        for (s, t), cost in problem.link_costs.items():
            if s in index and t in problem.models:
                links[index[s], problem.models.index(t)] = cost.get(r)
        use[r] = bits @ model_cost[r] + ((bits @ links) * predicted).sum(axis=1)
    fits = np.ones(len(masks), dtype=bool)
    for r, limit in budget.items():
        fits &= use[r] <= limit + 1e-12
    score = bits.sum(axis=1)
    for j, target in enumerate(problem.models):
        usable = [s for s in candidates
                  if s != target and s in problem.profile.pairwise.get(target, {})]
        table = _agreement_table(problem, target, usable)
        sub = np.zeros(len(masks), dtype=np.int64)
        for b, s in enumerate(usable):
            sub |= ((masks >> index[s]) & 1) << b
        score = score + predicted[:, j] * table[sub]
    if not fits.any():
        return frozenset()
    score = np.where(fits, score, -np.inf)
    best = score.max()
    tied = np.flatnonzero(score >= best - 1e-9)
    shares = sum(use[r][tied] / limit for r, limit in budget.items()) if budget else tied * 0.0
    winner = int(masks[tied[int(np.argmin(shares))]])
    return frozenset(m for i, m in enumerate(candidates) if winner >> i & 1)


class ExactPolicy(Policy):
    name: ClassVar[str] = "exact"

    def choose(self, problem: Problem) -> frozenset[str]:
        return exact_best(problem)


POLICIES: dict[str, type[Policy]] = {
    p.name: p for p in (ActivationPolicy, ExactPolicy, StandalonePolicy, AllPolicy)
}


def get_policy(name: str) -> Policy:
    return POLICIES[name]()
