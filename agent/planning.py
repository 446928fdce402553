"""Plans: an action for every model under the budgets (DESIGN, "Planning").

The actions of a model j:
- `run`: every frame. Cost: the model's own; agreement 1. The models that run every frame are
  the set A whose links predict others.
- `run/p`: every p-th frame of its camera, staggered across models so that the per-frame
  delay stays flat; between its runs its last exact output is served again (reused) with its
  age. Memory: the whole model (it stays loaded); delay: c_j / p per frame on average;
  agreement (1 + r_j(1) + ... + r_j(p-1)) / p, where r_j(a) is the agreement of its output
  reused at age a frames (`Problem.reuse`, measured on consecutive frames of one camera).
- `predict`: the ensemble of the links from A; charged the links it reads
  (`Problem.ensemble_sources`); agreement p_j(h_{A,j}) from the profile.
- `prior`: the bundle's constant predictor (`Problem.priors`); free.
- `none`: no output (agreement 0), for a model without a prior that nothing else serves.
Objective: the mean expected agreement over all models, subject to every budgeted resource
(memory: what is resident at once; delay: the mean per frame). Between plans of the same
expected agreement: the one taking the smaller share of the budgets (delay where nothing is
budgeted), then the one running models more often (exact outputs per frame, `_Choice.runs`):
under a memory-only budget a model that is resident either way runs every frame rather than
`run/p` when their figures tie (its reuse agrees 1.0): free, and exact; where delay is budgeted
the cheaper in delay wins the tie.

`plan_exact` is optimal over this space. For a fixed A the other models' choices share only
the budgets: a multiple-choice knapsack, solved exactly on the Pareto frontier of the budgeted
resources (`_complete`). The sets A are visited best upper bound first — |A| plus, for every
other model, the best of its prediction from A and its options that fit alone in what A
leaves — and the search stops when no bound beats the best plan found, so few sets are solved
in full. `plan_greedy` extends the paper's rule: A by activation score while A and the links
into all other models fit, then the rest of the budget goes to the upgrade (prior -> predict
or run/p) with the most agreement per budget share, repeatedly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agent.selection import RESOURCES, Problem, _agreement_table, activation_scores

RUN, PREDICT, PRIOR, NONE = "run", "predict", "prior", "none"
EPS = 1e-9


@dataclass(frozen=True)
class Action:
    kind: str  # run | predict | prior | none
    period: int = 1  # run only: every `period`-th frame of the model's camera
    sources: tuple[str, ...] = ()  # predict only: the models whose links it reads

    def __str__(self) -> str:
        return f"{RUN}/{self.period}" if self.kind == RUN and self.period > 1 else self.kind


@dataclass(frozen=True)
class Plan:
    actions: dict[str, Action]
    use: dict[str, float]
    expected_agreement: float

    @property
    def active(self) -> frozenset[str]:
        """The models that run every frame: the sources of the predictions."""
        return frozenset(m for m, a in self.actions.items() if a.kind == RUN and a.period == 1)

    def with_kind(self, kind: str) -> tuple[str, ...]:
        return tuple(m for m, a in self.actions.items() if a.kind == kind)

    def to_dict(self) -> dict[str, object]:
        return {"actions": {m: str(a) for m, a in self.actions.items()}, "use": self.use,
                "expected_agreement": self.expected_agreement}


@dataclass(frozen=True)
class _Option:
    action: Action
    cost: tuple[float, ...]  # per resource, in RESOURCES' order
    value: float

    @property
    def runs(self) -> float:
        """Exact outputs per frame: 1 / p for `run/p`, 0 for the others."""
        return 1.0 / self.action.period if self.action.kind == RUN else 0.0


@dataclass(frozen=True)
class _Choice:
    """A plan's figures in the order plans are compared (module doc), and its choices."""

    value: float  # expected agreement, summed over the models
    share: float  # of the budgets (delay where nothing is budgeted)
    runs: float  # exact outputs per frame, summed over the models
    active: frozenset[str]
    choices: dict[str, _Option]  # the models outside `active`

    def beats(self, other: _Choice | None) -> bool:
        if other is None or self.value > other.value + EPS:
            return True
        if self.value < other.value - EPS:
            return False
        if self.share < other.share - EPS:
            return True
        return self.share <= other.share + EPS and self.runs > other.runs + EPS


def run_agreement(reuse: Sequence[float], period: int) -> float:
    """Mean agreement of a model run every `period`-th frame, its output reused in between."""
    return (1.0 + float(sum(reuse[: period - 1]))) / period


def standing_options(problem: Problem, model: str) -> list[_Option]:
    """The options of `model` that do not depend on A: its prior (or no output) and `run/p`
    for every period whose reuse ages the profile covers."""
    options = [_Option(Action(PRIOR), (0.0,) * len(RESOURCES), problem.priors[model])
               if model in problem.priors else
               _Option(Action(NONE), (0.0,) * len(RESOURCES), 0.0)]
    reuse = problem.reuse.get(model, ())
    if model in problem.unavailable or not reuse:
        return options
    cost = problem.model_costs[model]
    for period in problem.periods:
        if 1 < period <= len(reuse) + 1:
            options.append(_Option(Action(RUN, period),
                                   tuple(cost.get(r) / period if r == "delay_ms" else cost.get(r)
                                         for r in RESOURCES),
                                   run_agreement(reuse, period)))
    return options


def predict_option(problem: Problem, active: frozenset[str], target: str,
                   agreement: float) -> _Option | None:
    sources = problem.ensemble_sources(active, target)
    if not sources or agreement <= 0.0:
        return None
    cost = tuple(sum(problem.link_costs[(s, target)].get(r) for s in sources) for r in RESOURCES)
    return _Option(Action(PREDICT, sources=tuple(sources)), cost, agreement)


class _Budget:
    def __init__(self, problem: Problem) -> None:
        self.dims = [i for i, r in enumerate(RESOURCES) if r in problem.budget]
        self.limit = {i: problem.budget[RESOURCES[i]] for i in self.dims}
        # what a share is taken of: the limit, but never 0 (a zero budget fits only what is
        # free, and a share of it must still compare)
        self.scale = {i: max(limit, EPS) for i, limit in self.limit.items()}

    def share(self, cost: Sequence[float]) -> float:
        """What a cost takes of the budgets, summed (the tie-break towards cheaper plans);
        delay where nothing is budgeted."""
        if not self.dims:
            return float(cost[RESOURCES.index("delay_ms")])
        return sum(cost[i] / self.scale[i] for i in self.dims)


def _complete(items: list[list[_Option]], room: dict[int, float], budget: _Budget
              ) -> tuple[float, float, float, tuple[int, ...]] | None:
    """The best choice of one option per item within `room` (budgeted resources only):
    (value, share, runs, option index per item), or None where nothing fits. Exact: partial
    choices are kept on their Pareto frontier (lower cost in every budgeted resource, or
    higher value; on a tie, the more runs)."""
    dims = budget.dims
    states: list[tuple[tuple[float, ...], float, float, tuple[int, ...]]] = [
        (tuple(0.0 for _ in dims), 0.0, 0.0, ())]
    for options in items:
        grown = []
        for cost, value, runs, picks in states:
            for index, option in enumerate(options):
                total = tuple(c + option.cost[d] for c, d in zip(cost, dims, strict=True))
                if all(t <= room[d] + 1e-12 for t, d in zip(total, dims, strict=True)):
                    grown.append((total, value + option.value, runs + option.runs,
                                  (*picks, index)))
        if not grown:
            return None
        grown.sort(key=lambda s: (-s[1], sum(s[0]), -s[2]))
        states = []
        for state in grown:  # kept states have at least this value: drop it if one costs less
            if not any(all(k <= c + 1e-12 for k, c in zip(kept[0], state[0], strict=True))
                       for kept in states):
                states.append(state)

    def share(cost: tuple[float, ...]) -> float:
        return sum(cost[i] / budget.scale[d] for i, d in enumerate(dims))

    cost, value, runs, picks = max(states, key=lambda s: (s[1], -share(s[0]), s[2]))
    return value, share(cost), runs, picks


def _best_unbounded(options: list[_Option], budget: _Budget) -> int:
    """The best option where nothing is budgeted; the cheaper on a tie."""
    return max(range(len(options)), key=lambda i: (
        options[i].value, -budget.share(options[i].cost), options[i].runs))


def _plan(problem: Problem, active: frozenset[str], choices: dict[str, _Option]) -> Plan:
    actions = {m: Action(RUN) if m in active else choices[m].action for m in problem.models}
    use = {r: sum(problem.model_costs[m].get(r) for m in active)
           + sum(o.cost[i] for o in choices.values()) for i, r in enumerate(RESOURCES)}
    value = len(active) + sum(o.value for o in choices.values())
    return Plan(actions, use, value / max(problem.k, 1))


def _solve(problem: Problem, budget: _Budget, active: frozenset[str],
           predicted: dict[str, float]) -> _Choice | None:
    """The best options of the models outside `active`, given each one's prediction figure."""
    others = [m for m in problem.models if m not in active]
    items = []
    for model in others:
        options = standing_options(problem, model)
        option = predict_option(problem, active, model, predicted.get(model, 0.0))
        if option is not None:
            options.append(option)
        items.append(options)
    room = {d: budget.limit[d] - sum(problem.model_costs[m].get(RESOURCES[d]) for m in active)
            for d in budget.dims}
    if not budget.dims:  # nothing budgeted: each model its best option, the cheaper on a tie
        picks = tuple(_best_unbounded(options, budget) for options in items)
        value = sum(o[i].value for o, i in zip(items, picks, strict=True))
        runs = sum(o[i].runs for o, i in zip(items, picks, strict=True))
        share = 0.0
    else:
        solved = _complete(items, room, budget)
        if solved is None:
            return None
        value, share, runs, picks = solved
    share += sum(budget.share([problem.model_costs[m].get(r) for r in RESOURCES])
                 for m in active)
    return _Choice(len(active) + value, share, len(active) + runs, active,
                   {m: o[i] for m, o, i in zip(others, items, picks, strict=True)})


def plan_exact(problem: Problem) -> Plan:
    """The plan with the highest expected agreement over the action space (module doc)."""
    budget = _Budget(problem)
    candidates = list(problem.candidates)
    n = len(candidates)
    index = {m: i for i, m in enumerate(candidates)}
    masks = np.arange(1 << n, dtype=np.int64)
    bits = ((masks[:, None] >> np.arange(n)) & 1).astype(np.float64)
    room = {}
    keep = np.ones(len(masks), dtype=bool)
    for d in budget.dims:
        spent = bits @ np.array([problem.model_costs[m].get(RESOURCES[d]) for m in candidates])
        room[d] = budget.limit[d] - spent
        keep &= room[d] >= -1e-12
    masks, bits = masks[keep], bits[keep]
    room = {d: r[keep] for d, r in room.items()}
    bound = bits.sum(axis=1)
    tables = {}
    for target in problem.models:
        usable = [s for s in candidates
                  if s != target and s in problem.profile.pairwise.get(target, {})]
        sub = np.zeros(len(masks), dtype=np.int64)
        for b, source in enumerate(usable):
            sub |= ((masks >> index[source]) & 1) << b
        predicted = _agreement_table(problem, target, usable)[sub]
        best = predicted.copy()
        for option in standing_options(problem, target):
            fits = np.ones(len(masks), dtype=bool)
            for d in budget.dims:
                fits &= option.cost[d] <= room[d] + 1e-12
            best = np.where(fits, np.maximum(best, option.value), best)
        outside = 1.0 - bits[:, index[target]] if target in index else np.ones(len(masks))
        bound += outside * best
        tables[target] = predicted
    rows = {int(mask): row for row, mask in enumerate(masks)}

    def solve(row: int) -> _Choice | None:
        active = frozenset(m for m in candidates if masks[row] >> index[m] & 1)
        return _solve(problem, budget, active,
                      {t: float(tables[t][row]) for t in problem.models if t not in active})

    found: _Choice | None = None
    for row in np.argsort(-bound, kind="stable"):
        if found is not None and bound[row] <= found.value + EPS:
            break
        solved = solve(int(row))
        if solved is not None and solved.beats(found):
            found = solved
    if found is None:  # every model's prior/none fits at no cost, so this cannot happen
        raise AssertionError("no plan fits, not even the free actions")
    # The search stops at the first set whose bound does not beat the best value, so a set
    # that only ties it (a `run/p` model run every frame instead: the same memory, and the
    # same figure where its reuse agrees 1.0) is not visited: try those.
    promoted = True
    while promoted:
        promoted = False
        for model in sorted(m for m, o in found.choices.items() if o.action.kind == RUN):
            mask = sum(1 << index[m] for m in found.active | {model})
            solved = solve(rows[mask]) if mask in rows else None
            if solved is not None and solved.beats(found):
                found, promoted = solved, True
                break
    return _plan(problem, found.active, found.choices)


def plan_greedy(problem: Problem) -> Plan:
    """The paper's activation rule for A, then the rest of the budget by agreement gained per
    budget share (module doc). Vectorised over models: k = 64 in a few milliseconds."""
    models = list(problem.models)
    k = len(models)
    position = {m: i for i, m in enumerate(models)}
    scores = activation_scores(problem) if k else {}
    order = sorted(problem.candidates, key=lambda m: (-scores[m], m))
    model_cost = np.array([[problem.model_costs[m].get(r) for r in RESOURCES] for m in models])
    link_cost = np.zeros((len(RESOURCES), k, k))  # [resource, source, target]
    pairs = [(position[s], position[t], link) for (s, t), link in problem.link_costs.items()
             if s in position and t in position]
    if pairs:  # filled in one assignment per resource: k = 64 has thousands of links
        sources, targets, links = zip(*pairs, strict=True)
        for r, resource in enumerate(RESOURCES):
            link_cost[r, sources, targets] = [getattr(link, resource) or 0.0
                                              for link in links]
    limit = np.array([problem.budget.get(r, np.inf) for r in RESOURCES])
    inside = np.zeros(k, dtype=bool)
    spent = np.zeros(len(RESOURCES))
    for model in order:  # the paper's rule: A and the links into all the others fit
        i = position[model]
        trial = inside.copy()
        trial[i] = True
        use = trial @ model_cost + np.einsum("rst,s,t->r", link_cost, trial, ~trial)
        if np.all(use <= limit + 1e-12):
            inside = trial
            spent = trial @ model_cost
    active = frozenset(m for m in models if inside[position[m]])
    others = [m for m in models if m not in active]
    items = []
    for model in others:
        options = standing_options(problem, model)
        option = predict_option(problem, active, model,
                                problem.profile.ensemble_agreement(model, active))
        if option is not None:
            options.append(option)
        if model not in problem.unavailable:  # what the rule left over may run it after all
            options.append(_Option(Action(RUN), tuple(model_cost[position[model]]), 1.0))
        items.append(options)
    # options as arrays [model, option(, resource)]; padding never upgrades (-inf value)
    width = max((len(o) for o in items), default=1)
    value = np.full((len(items), width), -np.inf)
    cost = np.zeros((len(items), width, len(RESOURCES)))
    for j, options in enumerate(items):
        for o, option in enumerate(options):
            value[j, o], cost[j, o] = option.value, option.cost
    weight = np.array([1.0 / max(problem.budget[r], EPS) if r in problem.budget else 0.0
                       for r in RESOURCES])
    if not problem.budget:
        weight[RESOURCES.index("delay_ms")] = 1.0
    rows = np.arange(len(items))
    picks = np.zeros(len(items), dtype=np.int64)  # each starts at its free option
    room = limit - spent
    while len(items):
        gain = value - value[rows, picks][:, None]
        extra = cost - cost[rows, picks][:, None, :]
        share = extra @ weight
        ok = (gain > EPS) & np.all(extra <= room + 1e-12, axis=2)
        if not ok.any():
            break
        ratio = np.where(ok, np.where(share > 0, gain / np.maximum(share, 1e-300), np.inf),
                         -np.inf)
        j, o = (int(i) for i in np.unravel_index(int(np.argmax(ratio)), ratio.shape))
        room = room - extra[j, o]
        picks[j] = o
    for j, options in enumerate(items):  # on a tie, `run` over `run/p` where it is free
        now = int(picks[j])
        if options[now].action.kind != RUN:
            continue
        for o, option in enumerate(options):
            extra = cost[j, o] - cost[j, now]
            if option.action == Action(RUN) and option.value >= value[j, now] - EPS \
                    and float(extra @ weight) <= EPS and np.all(extra <= room + 1e-12):
                room, picks[j] = room - extra, o
    chosen = {m: items[j][int(picks[j])] for j, m in enumerate(others)}
    upgraded = frozenset(m for m, o in chosen.items() if o.action == Action(RUN))
    return _plan(problem, active | upgraded,
                 {m: o for m, o in chosen.items() if m not in upgraded})
