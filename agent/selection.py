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
- `standalone`: the baseline without links: cheapest first while it fits; the rest get no output.
- `all`: every model, ignoring the budget.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar

from agent.costs import Cost
from links_tflite.bundle import Profile

log = logging.getLogger(__name__)

RESOURCES = ("memory_mb", "delay_ms")


class SelectionError(RuntimeError):
    """No activated set satisfies the budget."""


@dataclass(frozen=True)
class Problem:
    models: tuple[str, ...]
    model_costs: dict[str, Cost]
    link_costs: dict[tuple[str, str], Cost]
    profile: Profile
    budget: dict[str, float] = field(default_factory=dict)  # resource -> limit

    @property
    def k(self) -> int:
        return len(self.models)

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
        if not active:
            cheapest = {r: min(problem.model_costs[m].get(r) for m in problem.models)
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
    name: ClassVar[str] = "all"
    uses_links: ClassVar[bool] = False

    def choose(self, problem: Problem) -> frozenset[str]:
        return frozenset(problem.models)


POLICIES: dict[str, type[Policy]] = {
    p.name: p for p in (ActivationPolicy, StandalonePolicy, AllPolicy)
}


def get_policy(name: str) -> Policy:
    return POLICIES[name]()
