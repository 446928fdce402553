"""Budgeted selection of the activated models.

Objective (DESIGN): maximise (1/k)(|A| + sum_{j not in A} p_j(h_{A,j})) subject to, for each
budgeted resource, sum_{i in A} c(f_i) + sum_{j not in A} c(h_{A,j}) <= B. The cost of an
ensemble h_{A,j} is the sum of the costs of the links it reads from the activated sources
(`links_tflite.ensemble.contributing_sources`: the heaviest alone for a sequence target,
those with a positive weight otherwise, less those under the ensemble's `min_share` of the
present weight), given by `Problem.ensembles`; without it, all.

Policies are small classes behind one interface, registered by name:
- `activation`: the paper's rule. P_i = (1 + P1_i - P2_i) / (w c_i), w = 2 / min c, where P1_i
  is the mean agreement of i's links into the others (how well i predicts them), P2_i the mean
  agreement of the others' links into i (how well i is predicted). Greedy by P_i, skipping a
  model whose addition breaks a budget; stop rule: every model has been considered once.
  Where no model fits together with the links into the others, it runs what fits alone
  (as `standalone`) rather than nothing.
  With two budgets, c_i is the sum of i's shares of each budget. A cost of 0 is floored at
  1e-3 of the largest cost so that P_i stays finite.
- `exact`: the best activated set the profile allows. Every subset of the candidate models is
  scored at once with numpy (bitmask rows): model costs summed by matrix product, link costs
  as sum_{i in A, j not in A} c(g_ij), and p_j(h_{A,j}) looked up per target in a table indexed
  by the bitmask of A's usable sources (the profile's per-subset ensemble figure, falling
  back to the best single link as `Profile.ensemble_agreement` does). Each subset is also
  scored alone, |A| / k, the others getting no output: where links cost as much as the
  models (or the budget is tight), running more models beats predicting. Subsets whose model
  costs alone break a budget are pruned before the link and agreement terms are computed
  (model costs are a lower bound of the use), in chunks of bitmasks so that the scratch
  memory stays at a few MB. 2^k subsets: milliseconds at k = 12, about 0.1 s at k = 16;
  refused above `EXACT_MAX_MODELS` candidates with a clear error.
  Ties are broken towards the cheaper set (sum of budget shares), then the lower bitmask.
- `standalone`: the baseline without links: cheapest first while it fits; the rest get no output.
- `all`: every available model, ignoring the budget.

Models in `Problem.unavailable` (failed, backing off) are never activated by any policy; they
stay targets, predicted from the others.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from agent.costs import Cost
from agent.registry import Registry
from links_tflite.bundle import Profile
from links_tflite.ensemble import EnsembleRule

if TYPE_CHECKING:  # agent.planning builds on this module
    from agent.planning import Plan

log = logging.getLogger(__name__)

RESOURCES = ("memory_mb", "delay_ms")
EXACT_MAX_MODELS = 18  # 2^18 subsets; the tables of p_j(h_{A,j}) take k * 2^(k-1) floats
EXACT_CHUNK = 1 << 14  # subsets scored at once: a few MB of scratch


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
    # target -> its ensemble: which links it reads (every linked source where none given)
    ensembles: dict[str, EnsembleRule] = field(default_factory=dict)
    # model -> the held-out agreement of its prior (the bundle's constant predictor), served
    # at no cost; a model without one gets no output when it is neither run nor predicted
    priors: dict[str, float] = field(default_factory=dict)
    # model -> agreement of its own last exact output at age 1, 2, ... frames of its camera;
    # what `run/p` serves between its runs (agent/planning.py)
    reuse: dict[str, tuple[float, ...]] = field(default_factory=dict)
    periods: tuple[int, ...] = (2, 3, 4, 6, 8, 12, 16)  # the p of `run/p` a plan may use

    @property
    def k(self) -> int:
        return len(self.models)

    @property
    def candidates(self) -> tuple[str, ...]:
        """The models a policy may activate."""
        return tuple(m for m in self.models if m not in self.unavailable)

    def ensemble_sources(self, active: frozenset[str], target: str) -> list[str]:
        """The activated sources whose links the target's ensemble reads."""
        linked = [s for s in sorted(active) if (s, target) in self.link_costs]
        if target not in self.ensembles:
            return linked
        return self.ensembles[target].reads(linked)

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
    # an action per model (agent.planning) where the policy plans: `active` is then the
    # models it runs every frame, `predicted` all the others, whatever their action
    plan: Plan | None = None

    @property
    def resident(self) -> frozenset[str]:
        """The models kept loaded: the activated ones and those a plan runs every p-th frame."""
        if self.plan is None:
            return self.active
        return self.active | frozenset(self.plan.with_kind("run"))

    def to_dict(self) -> dict[str, object]:
        report: dict[str, object] = {
            "policy": self.policy,
            "active": sorted(self.active),
            "predicted": list(self.predicted),
            "use": self.use,
            "expected_agreement": self.expected_agreement,
        }
        if self.plan is not None:
            report["plan"] = self.plan.to_dict()
        return report


class Policy:
    name: ClassVar[str]
    uses_links: ClassVar[bool] = True
    # plans an action per model: the agent reserves its own measured time per frame out of
    # a delay budget before asking (agent.scheduler)
    plans: ClassVar[bool] = False

    def choose(self, problem: Problem) -> frozenset[str]:
        raise NotImplementedError

    def plan(self, problem: Problem) -> tuple[frozenset[str], bool]:
        """The activated set, and whether the other models are predicted through links."""
        return self.choose(problem), self.uses_links

    def select(self, problem: Problem) -> Selection:
        active, uses_links = self.plan(problem)
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
            use=problem.use(active, uses_links),
            expected_agreement=problem.expected_agreement(active, uses_links),
            uses_links=uses_links,
        )


# Built-in policies register here, in this order; plugins are files in agent/policies/.
POLICIES: Registry[type[Policy]] = Registry("policy", key="name", package="agent.policies")


def scalar_costs(problem: Problem) -> dict[str, float]:
    """One cost per model: its share of each budget, summed (delay if no budget is set)."""
    budget = problem.budget or {"delay_ms": 1.0}
    raw = {
        m: sum(problem.model_costs[m].get(r) / max(limit, 1e-9) for r, limit in budget.items())
        for m in problem.models
    }
    floor = max(max(raw.values(), default=0.0) * 1e-3, 1e-12)
    return {m: max(c, floor) for m, c in raw.items()}


def activation_scores(problem: Problem) -> dict[str, float]:
    """The paper's activation probability P_i for every model (vectorised: k = 64 in well
    under a millisecond)."""
    costs = scalar_costs(problem)
    w = 2.0 / min(costs.values())
    models = problem.models
    position = {m: i for i, m in enumerate(models)}
    agreement = np.zeros((len(models), len(models)))  # [source, target]; 0 without a link
    for target, sources in problem.profile.pairwise.items():
        if target in position:
            for source, value in sources.items():
                if source in position and source != target:
                    agreement[position[source], position[target]] = value
    others = max(len(models) - 1, 1)
    p1 = agreement.sum(axis=1) / others  # how well i predicts the others
    p2 = agreement.sum(axis=0) / others  # how well the others predict i
    return {m: float((1.0 + p1[i] - p2[i]) / (w * costs[m])) for i, m in enumerate(models)}


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

    def plan(self, problem: Problem) -> tuple[frozenset[str], bool]:
        """Stop rule extended: where no model fits together with the links that predict the
        others, run what fits alone (as `standalone`) rather than nothing."""
        active = self.choose(problem)
        if active:
            return active, True
        log.info("activation: nothing fits with links; running what fits alone")
        return StandalonePolicy().choose(problem), False


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
    table = np.full(1 << n, -np.inf)
    for b, source in enumerate(usable):  # subsets with top bit b: those below, plus source b
        table[1 << b: 2 << b] = np.maximum(table[: 1 << b],
                                           problem.profile.link_agreement(source, target))
    table[0] = 0.0
    position = {s: b for b, s in enumerate(usable)}
    for sources, value in problem.profile.ensembles.get(target, {}).items():
        if sources and all(s in position for s in sources):
            table[sum(1 << position[s] for s in sources)] = value
    return table


Best = tuple[float, float, int, bool]  # score, budget share, mask, uses links
Reader = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _ensemble_reader(problem: Problem, target: str, index: dict[str, int]) -> Reader:
    """For rows of candidate bits, one target's link cost per candidate and whether each
    candidate has a link into it: the cost of the links its ensemble reads from each row's
    set (as `Problem.ensemble_sources`). Only for targets in `Problem.ensembles`."""
    rule = problem.ensembles[target]
    weights, pooling, min_share = rule.weights, rule.pooling, rule.min_share
    if pooling == "heaviest_source":  # the linked present source that sorts first
        order = [index[s] for s in sorted(index, key=lambda s: (weights.get(s, 0.0), s),
                                          reverse=True)]

        def heaviest(bits: np.ndarray, cost: np.ndarray, linked: np.ndarray) -> np.ndarray:
            use, taken = np.zeros(len(bits)), np.zeros(len(bits), dtype=bool)
            for i in (i for i in order if linked[i]):
                here = (bits[:, i] > 0) & ~taken
                use[here] = cost[i]
                taken |= here
            return use
        return heaviest
    weight = np.array([max(weights.get(s, 0.0), 0.0) for s in index])

    def weighted(bits: np.ndarray, cost: np.ndarray, linked: np.ndarray) -> np.ndarray:
        present = bits * (linked * weight)  # rows: each linked source's weight, 0 if absent
        total = present.sum(axis=1, keepdims=True)
        reads = (present > 0) & (present >= min_share * total)
        if min_share > 0:  # where the floor leaves none, the heaviest (contributing_sources)
            heaviest = present.argmax(axis=1)
            none = ~reads.any(axis=1) & (total[:, 0] > 0)
            reads[none, heaviest[none]] = True
        return np.where(total[:, 0] > 0, reads @ cost, bits @ cost)
    return weighted


def _better(best: Best | None, score: np.ndarray, share: np.ndarray, masks: np.ndarray,
            uses_links: bool) -> Best | None:
    """The best of `best` and these scored subsets (-inf: does not fit); ties go to the
    cheaper set (sum of budget shares), then to the one seen first."""
    top = score.max()
    if not np.isfinite(top):
        return best
    tied = np.flatnonzero(score >= top - 1e-9)
    pick = tied[int(np.argmin(share[tied]))]
    candidate = (float(score[pick]), float(share[pick]), int(masks[pick]), uses_links)
    if best is None or candidate[0] > best[0] + 1e-9 or (
            candidate[0] >= best[0] - 1e-9 and candidate[1] < best[1]):
        return candidate
    return best


def exact_best(problem: Problem) -> tuple[frozenset[str], bool]:
    """The feasible non-empty activated set with the highest expected agreement, and whether
    the others are predicted: each subset is scored with links into every other model and,
    where that does not fit, alone (|A| / k: what `standalone` would get from it). Subsets
    are scored in chunks of `EXACT_CHUNK` bitmasks so that the scratch memory stays small."""
    candidates = list(problem.candidates)
    n = len(candidates)
    if n == 0:
        return frozenset(), True
    if n > EXACT_MAX_MODELS:
        raise SelectionError(f"policy exact: {n} candidate models; it enumerates 2^k subsets and "
                             f"is limited to k <= {EXACT_MAX_MODELS}: use `activation`")
    index = {m: i for i, m in enumerate(candidates)}
    budget = dict(problem.budget)
    model_cost = {r: np.array([problem.model_costs[m].get(r) for m in candidates])
                  for r in RESOURCES}
    link_cost = {r: np.zeros((n, problem.k)) for r in RESOURCES}
    linked = np.zeros((n, problem.k))  # 1 where the candidate has a link into the model
    for (s, t), cost in problem.link_costs.items():
        if s in index and t in problem.models:
            linked[index[s], problem.models.index(t)] = 1.0
            for r in RESOURCES:
                link_cost[r][index[s], problem.models.index(t)] = cost.get(r)
    # targets whose ensemble reads only some of A's links; every link into the others
    readers = {j: _ensemble_reader(problem, target, index)
               for j, target in enumerate(problem.models) if target in problem.ensembles}
    # per target: the bit of each usable source in the candidate mask, and its table
    targets = []
    for target in problem.models:
        usable = [s for s in candidates
                  if s != target and s in problem.profile.pairwise.get(target, {})]
        targets.append(([index[s] for s in usable], _agreement_table(problem, target, usable)))
    column = [index.get(m) for m in problem.models]

    best: Best | None = None
    for low in range(1, 1 << n, EXACT_CHUNK):
        masks = np.arange(low, min(low + EXACT_CHUNK, 1 << n), dtype=np.int64)
        bits = ((masks[:, None] >> np.arange(n)) & 1).astype(np.float64)  # rows: subsets
        # prune: a subset whose models alone break a budget cannot fit once links are added
        keep = np.ones(len(masks), dtype=bool)
        for r, limit in budget.items():
            keep &= bits @ model_cost[r] <= limit + 1e-12
        masks, bits = masks[keep], bits[keep]
        if not len(masks):
            continue
        alone = sum((bits @ model_cost[r] / max(limit, 1e-9) for r, limit in budget.items()),
                    np.zeros(len(masks)))
        best = _better(best, bits.sum(axis=1), alone, masks, False)
        # predicted[:, j] = 1 where model j (over all models) is not activated
        predicted = np.ones((len(masks), problem.k))
        for j, col in enumerate(column):
            if col is not None:
                predicted[:, j] = 1.0 - bits[:, col]
        fits = np.ones(len(masks), dtype=bool)
        share = np.zeros(len(masks))
        for r, limit in budget.items():
            links = bits @ link_cost[r]
            for j, reader in readers.items():
                links[:, j] = reader(bits, link_cost[r][:, j], linked[:, j])
            use = bits @ model_cost[r] + (links * predicted).sum(axis=1)
            fits &= use <= limit + 1e-12
            share += use / max(limit, 1e-9)
        if not fits.any():
            continue
        score = bits.sum(axis=1)
        for j, (positions, table) in enumerate(targets):
            sub = np.zeros(len(masks), dtype=np.int64)
            for b, position in enumerate(positions):
                sub |= ((masks >> position) & 1) << b
            score += predicted[:, j] * table[sub]
        best = _better(best, np.where(fits, score, -np.inf), share, masks, True)
    if best is None:
        return frozenset(), True
    return frozenset(m for i, m in enumerate(candidates) if best[2] >> i & 1), best[3]


class ExactPolicy(Policy):
    name: ClassVar[str] = "exact"

    def choose(self, problem: Problem) -> frozenset[str]:
        return self.plan(problem)[0]

    def plan(self, problem: Problem) -> tuple[frozenset[str], bool]:
        return exact_best(problem)


for _builtin in (ActivationPolicy, ExactPolicy, StandalonePolicy, AllPolicy):
    POLICIES.register(_builtin)


def get_policy(name: str) -> Policy:
    return POLICIES[name]()
