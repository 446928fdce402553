"""Subset-aware ensembles: one per target, trained once, serving any set of active sources,
never much worse than the best single link of the set, and profiled as shipped."""

from __future__ import annotations

import numpy as np
import pytest

from links_tflite.agreement import mean_agreement
from links_tflite.bundle import load_bundle
from links_tflite.ensemble import LEARNED, EnsemblePredictor, combine_outputs
from links_tflite.recording import Recording
from links_tflite.tasks import TaskSpec
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


def test_sequence_targets_take_the_heaviest_present_source() -> None:
    spec = TaskSpec("sequence", 0, vocab_size=5, max_len=3)
    a, b = np.array([[2, 3, 0]], np.float32), np.array([[4, 0, 0]], np.float32)
    weights = {"a": 0.7, "b": 0.3}
    np.testing.assert_array_equal(combine_outputs(spec, weights, {"a": a, "b": b}), a)
    np.testing.assert_array_equal(combine_outputs(spec, weights, {"b": b}), b)


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
