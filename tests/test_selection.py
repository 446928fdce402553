"""Selection policies on hand-computed cases and random instances."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from agent.costs import Cost
from agent.selection import (
    POLICIES,
    Problem,
    SelectionError,
    activation_scores,
    get_policy,
)
from links_tflite.bundle import Profile

PAIRWISE = {  # target -> source -> p_target(g_source,target)
    "a": {"b": 0.5, "c": 0.6},
    "b": {"a": 0.9, "c": 0.3},
    "c": {"a": 0.8, "b": 0.4},
}


def hand_problem(budget: dict[str, float], link_memory: float = 0.1) -> Problem:
    return Problem(
        models=("a", "b", "c"),
        model_costs={"a": Cost(4.0, 10.0), "b": Cost(1.0, 1.0), "c": Cost(2.0, 3.0)},
        link_costs={(s, t): Cost(link_memory, 0.01) for t, row in PAIRWISE.items() for s in row},
        profile=Profile(pairwise=PAIRWISE, ensembles={"a": {frozenset({"b", "c"}): 0.65}}),
        budget=budget,
    )


def test_paper_formula_by_hand() -> None:
    # c/B = 1, 0.25, 0.5 -> w = 2 / 0.25 = 8.
    # P1: a 0.85, b 0.45, c 0.45; P2: a 0.55, b 0.6, c 0.6.
    scores = activation_scores(hand_problem({"memory_mb": 4.0}))
    assert scores["a"] == pytest.approx((1 + 0.85 - 0.55) / (8 * 1.0))
    assert scores["b"] == pytest.approx((1 + 0.45 - 0.6) / (8 * 0.25))
    assert scores["c"] == pytest.approx((1 + 0.45 - 0.6) / (8 * 0.5))


def test_activation_greedy_by_hand() -> None:
    selection = get_policy("activation").select(hand_problem({"memory_mb": 4.0}))
    # order b, c, a: b and c fit (3 MB + two links into a = 3.2 MB), a does not.
    assert selection.active == frozenset({"b", "c"})
    assert selection.predicted == ("a",)
    assert selection.use["memory_mb"] == pytest.approx(3.2)
    assert selection.expected_agreement == pytest.approx((2 + 0.65) / 3)


def test_link_costs_count_against_the_budget() -> None:
    # `a` alone costs 4 MB, but predicting b and c from it adds two links.
    problem = hand_problem({"memory_mb": 4.05}, link_memory=0.1)
    assert not problem.fits(frozenset({"a"}))
    assert problem.fits(frozenset({"a"}), with_links=False)


def test_nothing_fits_is_a_clear_error() -> None:
    with pytest.raises(SelectionError, match="no model fits the budget"):
        get_policy("activation").select(hand_problem({"memory_mb": 0.5}))


def test_standalone_and_all() -> None:
    standalone = get_policy("standalone").select(hand_problem({"memory_mb": 3.5}))
    assert standalone.active == frozenset({"b", "c"})
    assert standalone.expected_agreement == pytest.approx(2 / 3)
    assert get_policy("all").select(hand_problem({"memory_mb": 0.5})).active == {"a", "b", "c"}


def random_problem(rng: np.random.Generator, k: int) -> Problem:
    models = tuple(f"m{i}" for i in range(k))
    pairwise = {t: {s: float(rng.random()) for s in models if s != t} for t in models}
    return Problem(
        models=models,
        model_costs={m: Cost(float(rng.uniform(0.5, 10)), float(rng.uniform(0.1, 5)))
                     for m in models},
        link_costs={(s, t): Cost(float(rng.uniform(0, 0.3)), float(rng.uniform(0, 0.1)))
                    for s, t in itertools.permutations(models, 2)},
        profile=Profile(pairwise=pairwise, ensembles={}),
        budget={"memory_mb": float(rng.uniform(3, 30)), "delay_ms": float(rng.uniform(2, 12))},
    )


@pytest.mark.parametrize("policy", sorted(set(POLICIES) - {"all"}))
def test_budgets_are_never_exceeded(policy: str) -> None:
    rng = np.random.default_rng(7)
    chosen = 0
    for _ in range(300):
        problem = random_problem(rng, int(rng.integers(2, 7)))
        try:
            selection = get_policy(policy).select(problem)
        except SelectionError:
            continue
        chosen += 1
        for resource, limit in problem.budget.items():
            assert selection.use[resource] <= limit + 1e-9
    assert chosen > 100  # the check above ran on many instances
