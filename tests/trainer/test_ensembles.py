"""Subset-aware ensembles: one per target, trained once, serving any set of active sources,
never much worse than the best single link of the set, and profiled as shipped."""

from __future__ import annotations

import numpy as np
import pytest

from links_tflite.agreement import mean_agreement
from links_tflite.bundle import load_bundle
from links_tflite.ensemble import (
    LEARNED,
    MIN_SHARE,
    EnsemblePredictor,
    combine_outputs,
    contributing_sources,
    open_link,
)
from links_tflite.recording import Recording
from links_tflite.tasks import TaskSpec, link_output
from offline_trainer.ensembles import fit_source_weights, profiled_subsets, random_masks
from offline_trainer.train_links import split_rows

pytestmark = pytest.mark.trainer

TOLERANCE = 0.02  # an ensemble may lose at most 2 points to the best single link of its set


def test_learned_weights_favour_the_better_source() -> None:
    rng = np.random.default_rng(0)
    spec = TaskSpec("single_label", 5)
    exact = np.eye(5, dtype=np.float32)[rng.integers(0, 5, 400)]
    good = 0.7 * exact + 0.3 * rng.dirichlet(np.ones(5), 400)
    noise = rng.dirichlet(np.ones(5), 400).astype(np.float32)
    weights = fit_source_weights(spec, {"good": good, "noise": noise}, exact, seed=0)
    assert weights["good"] > 0.8 > weights["noise"]
    assert sum(weights.values()) == pytest.approx(1.0)
    # renormalised over whichever sources are present
    only_noise = combine_outputs(spec, weights, {"noise": noise})
    np.testing.assert_allclose(only_noise, noise, rtol=1e-5)
    both = combine_outputs(spec, weights, {"good": good, "noise": noise})
    assert mean_agreement(spec, both, exact) >= mean_agreement(spec, good, exact) - TOLERANCE


def test_a_negligible_share_of_the_present_weight_is_not_read() -> None:
    """The weights persons' ensemble learned in a city bundle: vehicle_box's share beside
    caption is 0.03%, not read; beside vehicles alone it is 0.8%, still not; alone, read."""
    weights = {"caption": 0.958, "vehicle_box": 0.0003, "vehicles": 0.039}
    assert contributing_sources("mean", weights, weights, MIN_SHARE) == ["caption", "vehicles"]
    assert contributing_sources("mean", weights, ["vehicle_box", "vehicles"], MIN_SHARE) \
        == ["vehicles"]
    assert contributing_sources("mean", weights, ["vehicle_box"], MIN_SHARE) == ["vehicle_box"]
    assert contributing_sources("mean", weights, weights) == sorted(weights)
    rng = np.random.default_rng(0)
    outputs = {s: rng.random((6, 3)) for s in weights}
    spec = TaskSpec("regression", 3)
    read = combine_outputs(spec, weights, {s: outputs[s] for s in ("caption", "vehicles")})
    np.testing.assert_array_equal(combine_outputs(spec, weights, outputs, "mean", MIN_SHARE),
                                  read)
    assert not np.array_equal(combine_outputs(spec, weights, outputs), read)


def test_sequence_targets_take_the_heaviest_present_source() -> None:
    spec = TaskSpec("sequence", 0, vocab_size=5, max_len=3)
    a, b = np.array([[2, 3, 0]], np.float32), np.array([[4, 0, 0]], np.float32)
    weights = {"a": 0.7, "b": 0.3}
    np.testing.assert_array_equal(combine_outputs(spec, weights, {"a": a, "b": b}), a)
    np.testing.assert_array_equal(combine_outputs(spec, weights, {"b": b}), b)


def test_only_the_links_an_ensemble_reads_are_loaded_and_run(tmp_path) -> None:
    """A sequence target reads its heaviest present source: that link alone is loaded, run
    and reported, and the prediction is the one every link would have given. The figure is
    still looked up for the whole present set (what the selection counted)."""
    from offline_trainer.links import LinkTraining
    from offline_trainer.train_links import train_bundle_report
    from tests.support.synthetic import make_recording

    recording = make_recording(n=120, models=("digit", "reversed", "spelled"))
    # only the links into spelled, the target under test: the four others are never read
    train_bundle_report(recording.save(tmp_path / "rec.npz"), tmp_path / "bundle", 0.7,
                        LinkTraining(epochs=20), targets=("spelled",))
    bundle = load_bundle(tmp_path / "bundle")
    assert {(link.source, link.target) for link in bundle.links} \
        == {("digit", "spelled"), ("reversed", "spelled")}
    predictor = EnsemblePredictor(bundle)
    weights, pooling = predictor.weights("spelled")
    assert pooling == "heaviest_source"
    heaviest = max(("digit", "reversed"), key=lambda s: (weights[s], s))
    predictor.prepare({"digit", "reversed"}, ["spelled"])
    assert [link.name for link in predictor.needed_links({"digit", "reversed"}, ["spelled"])] \
        == [f"{heaviest}->spelled"]
    outputs = {s: recording.outputs[s][7] for s in ("digit", "reversed")}
    prediction = predictor.predict("spelled", outputs)
    assert prediction.sources == (heaviest,) and prediction.present == ("digit", "reversed")
    every = {s: open_link(bundle, bundle.link(s, "spelled")).run_one(outputs[s])
             for s in outputs}
    np.testing.assert_array_equal(
        prediction.value, combine_outputs(bundle.models["spelled"], weights, every, pooling))
    assert prediction.est_agreement == bundle.profile.ensemble_agreement(
        "spelled", frozenset(outputs))

    # a source output that repeats is not run through its link again; a new one is
    link = predictor._runners[f"{heaviest}->spelled"]
    again = predictor.predict("spelled", {s: v.copy() for s, v in outputs.items()})
    np.testing.assert_array_equal(again.value, prediction.value)
    assert link.reused == 1
    changed = {s: recording.outputs[s][8] for s in outputs}
    assert not np.array_equal(changed[heaviest], outputs[heaviest])
    fresh = predictor.predict("spelled", changed)
    assert link.reused == 1
    np.testing.assert_array_equal(fresh.value, open_link(
        bundle, bundle.link(heaviest, "spelled")).run_one(changed[heaviest]))
    with pytest.raises(ValueError, match="read-only"):
        link.run_one(changed[heaviest])[0] = 1.0
    with pytest.raises(ValueError, match=r"targets \['roman'\] are not in the recording"):
        train_bundle_report(tmp_path / "rec.npz", tmp_path / "other", targets=("roman",))
    assert not (tmp_path / "other").exists()


def test_boxes_are_pooled_by_a_presence_vote_then_averaged() -> None:
    spec = TaskSpec("localization", 4)
    box_a, box_b, empty = [0.1, 0.1, 0.5, 0.5], [0.3, 0.3, 0.7, 0.7], [0.0, 0.0, 0.0, 0.0]
    outputs = {"a": np.array([box_a, box_a, empty]), "b": np.array([box_b, empty, empty]),
               "c": np.array([empty, empty, empty])}
    pooled = combine_outputs(spec, {"a": 0.3, "b": 0.3, "c": 0.4}, outputs)
    # frame 0: a and b (0.6) outvote c: the mean of their boxes, not shrunk by c's empty box
    np.testing.assert_allclose(pooled[0], [0.2, 0.2, 0.6, 0.6], atol=1e-6)
    # frame 1: only a (0.3) sees a box: empty; frame 2: nobody does
    np.testing.assert_allclose(pooled[1:], 0.0)
    # one frame at a time gives the same as the batch
    single = combine_outputs(spec, {"a": 0.3, "b": 0.3, "c": 0.4},
                             {k: v[0] for k, v in outputs.items()})
    np.testing.assert_allclose(single, pooled[0], atol=1e-6)


def test_a_localization_link_gates_its_box_by_presence() -> None:
    spec = TaskSpec("localization", 4)
    logits = np.array([[3.0, 0.0, 0.0, 2.0, 2.0], [-3.0, 0.0, 0.0, 2.0, 2.0]])
    out = link_output(spec, logits)
    assert out.shape == (2, 4)
    box = 1 / (1 + np.exp(-2.0))
    np.testing.assert_allclose(out[0], [0.5, 0.5, box, box], rtol=1e-6)
    np.testing.assert_allclose(out[1], 0.0)  # "nothing there" is the empty box
    # a link of an older bundle (4 box logits) is only activated
    assert link_output(spec, logits[:, 1:]).shape == (2, 4)
    assert link_output(spec, logits[1:, 1:]).min() > 0


def test_subsets_enumerated_up_to_12_models_and_sampled_beyond() -> None:
    sources = [f"m{i}" for i in range(11)]  # 12 models: 11 sources per target
    subsets, sampled = profiled_subsets(sources)
    assert not sampled and len(subsets) == 2**11 - 1 == len(set(subsets))
    many = [f"m{i}" for i in range(15)]
    subsets, sampled = profiled_subsets(many, sampled=100)
    assert sampled and len(subsets) == 15 + 1 + 100
    assert frozenset(many) in subsets and all(frozenset([s]) in subsets for s in many)
    assert all(row.sum() >= 1 for row in random_masks(np.random.default_rng(0), 500, 3))


def test_every_subset_at_least_as_good_as_its_best_link(digits_build) -> None:
    profile = load_bundle(digits_build.bundle).profile
    checked = 0
    for target, table in profile.ensembles.items():
        for subset, value in table.items():
            best = max(profile.link_agreement(s, target) for s in subset)
            assert value >= best - TOLERANCE, (target, sorted(subset), value, best)
            assert profile.subset_details[target][subset]["best_single"] == pytest.approx(best)
            checked += 1
    assert checked == 9  # three targets, three non-empty subsets of two sources each


def test_adding_a_source_does_not_make_it_worse(digits_build) -> None:
    profile = load_bundle(digits_build.bundle).profile
    for target, table in profile.ensembles.items():
        for subset, value in table.items():
            for bigger, bigger_value in table.items():
                if subset < bigger:
                    assert bigger_value >= value - TOLERANCE, (target, sorted(subset),
                                                               sorted(bigger))


def test_profile_is_measured_with_the_shipped_ensemble(digits_build) -> None:
    """Run the bundle's EnsemblePredictor frame by frame on the held-out frames: it reproduces
    the profile's per-subset agreement."""
    bundle = load_bundle(digits_build.bundle)
    recording = Recording.load(digits_build.recording)
    _, held_out = split_rows(len(recording), bundle.manifest["train_fraction"],
                             bundle.manifest["seed"])
    assert {e.method for e in bundle.ensembles.values()} == {LEARNED}
    assert {e.min_share for e in bundle.ensembles.values()} == {MIN_SHARE}
    predictor = EnsemblePredictor(bundle)
    for target in bundle.models:
        sources = tuple(bundle.ensembles[target].sources)
        for subset in (frozenset(sources), frozenset(sources[:1])):
            predictor.prepare(subset, [target])
            predicted = np.stack([
                predictor.predict(target, {s: recording.outputs[s][row] for s in subset}).value
                for row in held_out
            ])
            measured = mean_agreement(bundle.models[target], predicted,
                                      recording.outputs[target][held_out])
            assert measured == pytest.approx(bundle.profile.ensembles[target][subset], abs=0.01)


def test_links_the_calibration_frames_cannot_tell_apart_are_ranked_on_all_frames() -> None:
    """On calibration frames a clear gain decides, even against the fitting frames (where an
    overfit link looks best); a gain within one standard error does not: the agreement over
    fitting and calibration frames together does."""
    from offline_trainer.ensembles import link_order

    rng = np.random.default_rng(0)
    close_a = (rng.random(60) < 0.80).astype(float)
    close_b = close_a.copy()
    close_b[np.flatnonzero(close_a == 1)[:2]] = 0.0  # two frames worse, one better:
    close_b[np.flatnonzero(close_a == 0)[0]] = 1.0  # within one standard error
    fitting = {"a": np.full(200, 0.70), "b": np.full(200, 0.90)}
    assert link_order({"a": close_a, "b": close_b}, fitting) == ["b", "a"]
    clear_a, clear_b = np.ones(60), np.r_[np.ones(30), np.zeros(30)]
    overfit = {"a": np.full(200, 0.5), "b": np.ones(200)}
    assert link_order({"a": clear_a, "b": clear_b}, overfit) == ["a", "b"]
    assert link_order({"b": close_a, "a": close_a}) == ["a", "b"]  # a tie: by name


def test_a_mixture_the_calibration_frames_cannot_tell_from_the_best_link_is_not_kept() -> None:
    """Two links, one better; on 6 calibration frames nothing a mixture gains can be told
    apart from luck, so the best link serves alone (every other under the read share)."""
    from offline_trainer.ensembles import calibrated_weights

    spec = TaskSpec("single_label", 4)
    rng = np.random.default_rng(1)
    exact = np.eye(4)[rng.integers(0, 4, 6)]
    good = 0.6 * exact + 0.4 * rng.dirichlet(np.ones(4), 6)
    weak = 0.3 * exact + 0.7 * rng.dirichlet(np.ones(4), 6)
    weights = calibrated_weights(spec, {"good": good, "weak": weak}, exact,
                                 min_share=MIN_SHARE,
                                 fitting={"good": np.full(24, 0.9), "weak": np.full(24, 0.5)})
    assert contributing_sources("log_linear", weights, ["good", "weak"], MIN_SHARE) == ["good"]
    # a sequence target reads one link: the best ranked
    sequence = TaskSpec("sequence", 0, vocab_size=5, max_len=3)
    tokens = np.array([[2, 3, 0]] * 6, np.float32)
    ranked = calibrated_weights(sequence, {"x": tokens, "y": tokens}, tokens,
                                fitting={"x": np.full(24, 0.5), "y": np.full(24, 0.9)})
    assert contributing_sources("heaviest_source", ranked, ["x", "y"]) == ["y"]
