"""The profiling window: when one is due, how it counts frames, what it leaves behind."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.config import ProfilingConfig
from agent.profiling import PRIOR
from agent.window import ProfilingWindow
from links_tflite.bundle import Profile

BASE = Profile(pairwise={"b": {"a": 0.5}}, ensembles={"b": {frozenset({"a"}): 0.5}})


class FakeBundle:
    """What `end` reads of a bundle: its profile."""

    profile = BASE
    root = Path("/nonexistent")


def window(**settings: object) -> ProfilingWindow:
    values = {"period_frames": 0, "sample_frames": 2, "min_samples": 2, **settings}
    return ProfilingWindow(ProfilingConfig(**values), BASE)  # type: ignore[arg-type]


def test_due_on_request_every_period_and_never_inside_a_window() -> None:
    w = window(period_frames=3)
    started = time.monotonic()
    assert not w.due(started)
    w.request()
    assert w.due(started) and not w.due(started)  # a request opens one window
    for _ in range(3):
        w.count_frame(False, 0.0)
    assert w.due(started)
    w.left = 1  # a window in progress: never due
    assert not w.due(started)


def test_due_after_period_s_since_the_last_window() -> None:
    w = window(period_s=0.01)
    started = time.monotonic() - 1.0
    assert w.due(started)
    w.stats.last_end = time.monotonic()
    assert not w.due(started)


def test_a_window_counts_its_frames_and_its_cost_then_closes() -> None:
    w = window()
    w.left = 2
    assert not w.count_frame(True, 1.5)
    assert w.count_frame(True, 2.5)  # the last frame closes it
    assert w.stats.frames == 2 and w.stats.cost_ms == 4.0
    assert w.stats.last_window_cost_ms == 4.0


def test_the_end_puts_the_online_figures_in_force_where_they_rest_on_enough_frames() -> None:
    w = window()
    w.online.add("b", frozenset({"a"}), 1.0)
    w.end(FakeBundle(), extra_memory_mb=12.0)  # type: ignore[arg-type]
    assert w.profile.ensemble_agreement("b", frozenset({"a"})) == 0.5  # one sample: not yet
    w.online.add("b", frozenset({"a"}), 1.0)
    w.end(FakeBundle(), extra_memory_mb=12.0)  # type: ignore[arg-type]
    assert w.profile.ensemble_agreement("b", frozenset({"a"})) == 1.0
    report = w.to_dict(loop_ms=100.0)
    assert report["windows"] == 2 and report["last_window_extra_memory_mb"] == 12.0
    assert report["in_window"] is False and report["online"]["figures_in_use"] == 1


def test_the_agreement_gap_compares_the_measured_ensembles_of_what_was_predicted() -> None:
    w = window()
    assert w.agreement_gap(BASE, ["b"], ["a"]) is None  # nothing measured yet
    w.online.add("b", frozenset({"a"}), 0.2)
    w.online.add("b", frozenset({"a"}), 0.4)
    assert w.agreement_gap(BASE, ["b"], ["a"]) == (0.5, pytest.approx(0.3))
    assert w.agreement_gap(BASE, ["b"], ["c"]) is None  # no link from what was active
    assert w.agreement_gap(BASE, [], ["a"]) is None  # nothing predicted


def test_a_prior_scored_in_a_window_replaces_the_bundles_figure() -> None:
    """The empty source set is the prior's figure: measured on the stream, it replaces the
    recording's (a constant agrees with a stream that stays put, not with one that moves)."""
    class WithPriors(FakeBundle):
        profile = Profile(pairwise=BASE.pairwise, ensembles=BASE.ensembles,
                          priors={"a": 0.9, "b": 0.4})

    w = ProfilingWindow(ProfilingConfig(period_frames=0, sample_frames=2, min_samples=2),
                        WithPriors.profile)
    for value in (0.2, 0.4):
        w.online.add("a", PRIOR, value)
    w.end(WithPriors(), extra_memory_mb=0.0)  # type: ignore[arg-type]
    assert w.profile.priors == {"a": pytest.approx(0.3), "b": 0.4}
    assert w.profile.ensembles == BASE.ensembles  # no source set is not an ensemble
    other = Profile(pairwise={}, ensembles={}, priors={"a": 0.5})
    w.rebase(other)  # another bundle: its figures, none of the last one's online ones
    assert w.profile is other and w.online.summary()["figures"] == 0
