"""`plan`: an action per model (agent.planning) instead of one activated set.

Each model is run every frame, run every p-th frame of its camera (its last exact output
reused in between), predicted through the links of the models run every frame, served its
prior, or given nothing, whichever plan has the highest mean expected agreement under the
budgets. `plan_exact` (optimal over that space) up to `EXACT_MAX_CANDIDATES` models that can
run, `plan_greedy` (the paper's rule extended to the actions) above. The selection's `active`
is the models run every frame; the loop executes the rest of the plan (agent.timetable).
"""

from __future__ import annotations

from typing import ClassVar

from agent.planning import Plan, plan_exact, plan_greedy
from agent.selection import POLICIES, Policy, Problem, Selection

EXACT_MAX_CANDIDATES = 12  # plan_exact: < 1 s at k = 12 (benchmarks/results/planning.md)


@POLICIES.register
class PlanPolicy(Policy):
    name: ClassVar[str] = "plan"
    plans: ClassVar[bool] = True

    def choose(self, problem: Problem) -> frozenset[str]:
        return self.select(problem).active

    def select(self, problem: Problem) -> Selection:
        """Never refuses: a plan where nothing runs (every model served its prior, or
        nothing) is still a plan, and the free actions always fit."""
        exact = len(problem.candidates) <= EXACT_MAX_CANDIDATES
        return plan_selection(plan_exact(problem) if exact else plan_greedy(problem))


def plan_selection(plan: Plan) -> Selection:
    """A plan as the selection the loop applies: `active` the models run every frame, the
    others `predicted` (the loop serves each its planned action)."""
    return Selection(
        policy=PlanPolicy.name,
        active=plan.active,
        predicted=tuple(m for m in plan.actions if m not in plan.active),
        use=plan.use,
        expected_agreement=plan.expected_agreement,
        uses_links=True,
        plan=plan,
    )
