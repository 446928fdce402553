"""The evaluation on a reduced configuration (three digits models, two training shares, a
short stream): the structure and sanity of what it writes, and the frame filter."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from agent.sources.base import Frame
from offline_trainer.evaluation.filtering import (
    FrameFilter,
    calibrate_threshold,
    consecutive_differences,
    processed_share,
)
from tests.conftest import LINKED_MODELS


def _frames(values: list[float], cameras: int = 1) -> list[Frame]:
    return [Frame(frame_id=i, ts=float(i), camera=i % cameras,
                  modalities={"image": np.full((4, 4), v, np.float32)})
            for i, v in enumerate(values)]


def test_filter_reuses_within_threshold_per_camera() -> None:
    # camera 0 sees 0, 0.1, 5; camera 1 sees 1, 1.05, 1.1 (interleaved)
    frames = _frames([0.0, 1.0, 0.1, 1.05, 5.0, 1.1], cameras=2)
    frame_filter = FrameFilter(threshold=0.2)
    decisions = [frame_filter.should_process(f) for f in frames]
    # each camera's first frame; then only camera 0's jump to 5 (differences are to the last
    # *processed* frame: camera 1's 1.1 is 0.1 from its processed 1.0)
    assert decisions == [True, True, False, False, True, False]


@pytest.mark.parametrize("target", [0.2, 0.5, 0.8])
def test_calibrated_threshold_meets_the_share(target: float) -> None:
    rng = np.random.default_rng(0)
    frames = _frames(list(np.cumsum(rng.exponential(1.0, 200))))
    threshold = calibrate_threshold(frames, target)
    share = processed_share(frames, threshold)
    assert share <= target
    # the least skipping that meets it: the next smaller candidate processes too many
    smaller = [d for d in consecutive_differences(frames) if d < threshold]
    assert not smaller or processed_share(frames, max(smaller)) > target


def test_calibration_at_full_share_processes_everything() -> None:
    frames = _frames([0.0] * 10)
    assert processed_share(frames, calibrate_threshold(frames, 1.0)) == 1.0


@pytest.fixture(scope="module")
def evaluation(digits_build, tmp_path_factory: pytest.TempPathFactory):
    from offline_trainer.evaluation.report import write_report
    from offline_trainer.evaluation.run import EvaluationSettings, evaluate

    out = tmp_path_factory.mktemp("evaluation")
    settings = EvaluationSettings(
        workload="digits", out=out / "build", results=out / "results" / "evaluation-digits.md",
        models=LINKED_MODELS, fractions=(0.05, 0.48), shares=(1 / 3, 2 / 3),
        curve_shares=(1 / 3, 1.0), epochs=5, frames=80, rss_frames=0, zoo=digits_build.root,
    )
    result = evaluate(settings)
    return result, write_report(result, "mlink-train evaluate (test)")


def test_results_file_has_every_part(evaluation) -> None:
    _, path = evaluation
    text = path.read_text()
    for heading in ("## 1. Link agreement vs training data", "## 2. Ensembles",
                    "## 3. Methods under a budget", "## 4. Per-action agreements",
                    "## 5. Agreement vs budget", "## 6. Overhead", "## Claims"):
        assert heading in text
    for png in ("evaluation-digits-fractions.png", "evaluation-digits-budget.png"):
        data = (path.parent / "evaluation" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


def test_fractions_cover_every_link_and_are_agreements(evaluation) -> None:
    ev, _ = evaluation
    assert sorted(ev.fractions) == [0.05, 0.48]
    pairs = {f"{s}->{t}" for s in LINKED_MODELS for t in LINKED_MODELS if s != t}
    for table in ev.fractions.values():
        assert set(table) == pairs
        assert all(0.0 <= v <= 1.0 for v in table.values())


def test_methods_are_sane(evaluation) -> None:
    ev, _ = evaluation
    k = len(LINKED_MODELS)
    for r in ev.table + ev.curve:
        if r.scored is None:
            continue
        assert 0.0 <= r.scored.agreement <= 1.0 and 0.0 <= r.scored.accuracy <= 1.0
        assert 0.0 < r.scored.processed_share <= 1.0
        if r.method == "all":
            assert r.scored.agreement == pytest.approx(1.0)
            assert r.scored.processed_share == 1.0
        if r.method == "standalone":
            # no links: the share of models it runs, plus what the priors of the others
            # agree (the agent serves them)
            assert r.scored.agreement >= len(r.active) / k - 1e-9
        if r.method in ("standalone", "mlink-activation", "mlink-exact"):
            assert r.use <= r.budget + 1e-9  # never over the budget, links counted
    standalone = next(r for r in ev.table if r.method == "standalone"
                      and r.resource == "memory_mb" and r.share == pytest.approx(1 / 3))
    assert standalone.scored is not None and len(standalone.active) < k


def test_exact_expects_at_least_the_paper_rule(evaluation) -> None:
    ev, _ = evaluation
    for share in {r.share for r in ev.curve}:
        got = {r.method: r for r in ev.curve if r.share == share}
        exact, paper = got["mlink-exact"], got["mlink-activation"]
        if paper.expected is not None:
            assert exact.expected is not None and exact.expected >= paper.expected - 1e-9


def test_a_second_run_reuses_the_bundle_and_the_fractions(evaluation) -> None:
    from offline_trainer.evaluation.run import evaluate

    ev, _ = evaluation
    manifest = ev.settings.out / "bundle" / "manifest.json"
    cache = ev.settings.out / "fractions.json"
    before = (manifest.stat().st_mtime_ns, cache.stat().st_mtime_ns)
    # what is cached: the bundle and the fraction table, stamped with what they are trained
    # from (not the budgets); the methods at each budget, recomputed each run, are left out
    again = evaluate(dataclasses.replace(ev.settings, shares=(), curve_shares=()))
    assert (manifest.stat().st_mtime_ns, cache.stat().st_mtime_ns) == before
    assert again.fractions == ev.fractions


def test_evaluate_cli_refuses_unknown_models(tmp_path: Path, digits_build) -> None:
    from offline_trainer.cli import main

    code = main(["evaluate", "--workload", "digits", "--models", "digit,nosuch",
                 "--zoo", str(digits_build.root), "--out", str(tmp_path / "b"),
                 "--results", str(tmp_path / "r.md")])
    assert code == 2


def test_plan_value_follows_the_figures() -> None:
    from agent.planning import Action, Plan
    from links_tflite.bundle import Profile
    from offline_trainer.evaluation.actions import ActionFigures
    from offline_trainer.evaluation.methods import plan_value

    figures = ActionFigures(
        frames=10,
        profile=Profile(pairwise={"b": {"a": 0.6}}, ensembles={"b": {frozenset({"a"}): 0.7}}),
        priors={"b": 0.5, "c": 0.4}, reuse={"c": (0.8, 0.6)})
    plan = Plan({"a": Action("run"), "b": Action("predict", sources=("a",)),
                 "c": Action("run", 3)}, {}, 0.0)
    assert plan_value(plan, figures) == pytest.approx((1.0 + 0.7 + (1 + 0.8 + 0.6) / 3) / 3)
    prior = Plan({"a": Action("run"), "b": Action("prior"), "c": Action("none")}, {}, 0.0)
    assert plan_value(prior, figures) == pytest.approx((1.0 + 0.5) / 3)
