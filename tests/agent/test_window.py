"""The profiling window: when one is due, how it counts frames, what it leaves behind."""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar

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


def test_the_end_blends_the_online_figures_into_the_bundles() -> None:
    """The bundle's figure counts as `min_samples` frames beside the window's: a window
    that agreed on its one frame does not overrule the held-out profile alone."""
    w = window()  # min_samples 2
    w.online.add("b", frozenset({"a"}), 1.0)
    w.end(FakeBundle(), extra_memory_mb=12.0)  # type: ignore[arg-type]
    assert w.profile.ensemble_agreement("b", frozenset({"a"})) == pytest.approx((1 + 2 * 0.5) / 3)
    w.online.add("b", frozenset({"a"}), 1.0)
    w.end(FakeBundle(), extra_memory_mb=12.0)  # type: ignore[arg-type]
    assert w.profile.ensemble_agreement("b", frozenset({"a"})) == pytest.approx(0.75)
    assert w.profile.pairwise["b"]["a"] == pytest.approx(0.75)  # the single link's too
    w.online.add("b", frozenset({"a", "c"}), 0.9)  # a subset the bundle has no figure for
    w.end(FakeBundle(), extra_memory_mb=12.0)  # type: ignore[arg-type]
    assert frozenset({"a", "c"}) not in w.profile.ensembles["b"]  # one frame: not yet
    w.online.add("b", frozenset({"a", "c"}), 0.7)
    w.end(FakeBundle(), extra_memory_mb=12.0)  # type: ignore[arg-type]
    assert w.profile.ensembles["b"][frozenset({"a", "c"})] == pytest.approx(0.8)
    report = w.to_dict(loop_ms=100.0)
    assert report["windows"] == 4 and report["last_window_extra_memory_mb"] == 12.0
    assert report["in_window"] is False and report["online"]["figures_in_use"] == 2


def test_the_agreement_gap_compares_the_measured_ensembles_of_what_was_predicted() -> None:
    w = window()
    assert w.agreement_gap(BASE, ["b"], ["a"]) is None  # nothing measured yet
    w.online.add("b", frozenset({"a"}), 0.2)
    w.online.add("b", frozenset({"a"}), 0.4)
    assert w.agreement_gap(BASE, ["b"], ["a"]) == (0.5, pytest.approx(0.3))
    assert w.agreement_gap(BASE, ["b"], ["c"]) is None  # no link from what was active
    assert w.agreement_gap(BASE, [], ["a"]) is None  # nothing predicted


def test_a_prior_scored_in_a_window_is_blended_with_the_bundles_figure() -> None:
    """The empty source set is the prior's figure: measured on the stream, it moves the
    recording's (a constant agrees with a stream that stays put, not with one that moves)."""
    class WithPriors(FakeBundle):
        profile = Profile(pairwise=BASE.pairwise, ensembles=BASE.ensembles,
                          priors={"a": 0.9, "b": 0.4})

    w = ProfilingWindow(ProfilingConfig(period_frames=0, sample_frames=2, min_samples=2),
                        WithPriors.profile)
    for value in (0.2, 0.4):
        w.online.add("a", PRIOR, value)
    w.end(WithPriors(), extra_memory_mb=0.0)  # type: ignore[arg-type]
    assert w.profile.priors == {"a": pytest.approx((2 * 0.3 + 2 * 0.9) / 4), "b": 0.4}
    assert w.profile.ensembles == BASE.ensembles  # no source set is not an ensemble
    other = Profile(pairwise={}, ensembles={}, priors={"a": 0.5})
    w.rebase(other)  # another bundle: its figures, none of the last one's online ones
    assert w.profile == other and w.online.summary()["figures"] == 0


def test_the_end_keeps_a_stream_prior_where_it_beats_the_bundles_prior() -> None:
    """Each model's window outputs give a constant (links_tflite.prior.stream_prior); it is
    served in place of the bundle's prior where its out-of-sample figure is higher than the
    bundle's prior measured in the same window, and survives a bundle swap."""
    import numpy as np

    from agent.sources import Frame
    from links_tflite.tasks import TaskSpec

    labels = TaskSpec("single_label", 2)

    class WithModels(FakeBundle):
        profile = Profile(pairwise=BASE.pairwise, ensembles=BASE.ensembles,
                          priors={"a": 0.9, "b": 0.9})
        models: ClassVar[dict[str, TaskSpec]] = {"a": labels, "b": labels}
        links: ClassVar[list[object]] = []

    w = ProfilingWindow(ProfilingConfig(period_frames=0, sample_frames=8, min_samples=2),
                        WithModels.profile)
    w.begin(WithModels(), [])  # type: ignore[arg-type]
    for i in range(8):
        frame = Frame(frame_id=i, ts=float(i), camera=0, modalities={})
        w.record(frame, {"a": np.eye(2, dtype=np.float32)[1],  # stays put: a constant does
                         "b": np.eye(2, dtype=np.float32)[i % 2]})  # flips: a constant cannot
        w.online.add("a", PRIOR, 0.0)  # the bundle's priors on those frames
        w.online.add("b", PRIOR, 0.5)
    w.end(WithModels(), extra_memory_mb=0.0)  # type: ignore[arg-type]
    assert set(w.stream_priors) == {"a"}
    value, figure = w.stream_priors["a"]
    assert int(np.argmax(value)) == 1 and figure == 1.0
    assert w.profile.priors == {"a": 1.0, "b": pytest.approx((8 * 0.5 + 2 * 0.9) / 10)}
    assert w.to_dict(loop_ms=1.0)["stream_priors"] == {"a": 1.0}
    w.rebase(Profile(pairwise={}, ensembles={}, priors={"a": 0.2, "b": 0.7}))
    assert w.profile.priors == {"a": 1.0, "b": 0.7}  # the stream's own constant stays
    w.rebase(Profile(pairwise={}, ensembles={}, priors={"a": 1.0}))
    assert w.stream_priors == {} and w.profile.priors == {"a": 1.0}  # no longer better
