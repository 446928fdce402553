"""The prior (a target's constant predictor) is the floor every link must clear: links that
do not beat it on calibration frames are not shipped, and the prior serves their target."""

from __future__ import annotations

import numpy as np
import pytest

from links_tflite.agreement import mean_agreement
from links_tflite.ensemble import EnsemblePredictor, combine_outputs
from links_tflite.prior import clamp, fit_prior, output_range, prior_outputs
from links_tflite.tasks import TaskSpec


def test_each_kind_has_its_constant() -> None:
    labels = np.eye(3)[[0, 1, 1, 2, 1]]
    np.testing.assert_allclose(fit_prior(TaskSpec("single_label", 3), labels), [0.2, 0.6, 0.2])
    rates = np.array([[0.9, 0.1], [0.8, 0.7], [0.2, 0.1]])
    np.testing.assert_array_equal(fit_prior(TaskSpec("multi_label", 2), rates), [1.0, 0.0])
    counts = np.array([[0.0, 5.0], [1.0, 7.0], [9.0, 6.0]])
    np.testing.assert_array_equal(fit_prior(TaskSpec("regression", 2), counts), [1.0, 6.0])
    seq = TaskSpec("sequence", 0, vocab_size=9, max_len=3)
    rows = np.array([[3, 4, 0], [5, 0, 0], [3, 4, 0]])
    np.testing.assert_array_equal(fit_prior(seq, rows), [3, 4, 0])
    box = [0.1, 0.1, 0.5, 0.5]
    boxes = np.array([box, box, [0.12, 0.1, 0.5, 0.52], [0, 0, 0, 0]])
    np.testing.assert_allclose(fit_prior(TaskSpec("localization", 4), boxes), box)
    empties = np.array([[0, 0, 0, 0]] * 3 + [box])
    np.testing.assert_array_equal(fit_prior(TaskSpec("localization", 4), empties), 0.0)
    assert prior_outputs(np.array([1.0, 2.0]), 3).shape == (3, 2)


def test_regression_outputs_are_clamped_to_the_recorded_range() -> None:
    bounds = output_range(np.array([[0.0, 2.0], [4.0, 3.0]]))
    values = np.array([[-1.0, 2.5], [9.0, 1.0]])
    np.testing.assert_array_equal(clamp(values, bounds), [[0.0, 2.5], [4.0, 2.0]])
    assert clamp(values, None) is values


@pytest.mark.trainer
def test_calibration_weights_beat_in_sample_weights() -> None:
    """An overfit link is perfect on its own training frames and poor elsewhere: weights fit
    in-sample give it the ensemble; weights fit on calibration frames do not."""
    from offline_trainer.ensembles import calibrated_weights, fit_source_weights

    rng = np.random.default_rng(0)
    spec = TaskSpec("single_label", 5)

    def frames(n: int, overfit_quality: float) -> tuple[dict[str, np.ndarray], np.ndarray]:
        exact = np.eye(5)[rng.integers(0, 5, n)]
        honest = 0.2 * exact + 0.8 * rng.dirichlet(np.ones(5), n)
        overfit = overfit_quality * exact + (1 - overfit_quality) * rng.dirichlet(
            np.ones(5) * 0.3, n)
        return {"honest": honest, "overfit": overfit}, exact

    train, train_exact = frames(300, 0.95)  # the links' training frames
    calibration, calibration_exact = frames(100, 0.1)
    held_out, held_out_exact = frames(400, 0.1)
    in_sample = fit_source_weights(spec, train, train_exact)
    calibrated = calibrated_weights(spec, calibration, calibration_exact)
    assert in_sample["overfit"] > 0.8 and calibrated["honest"] > 0.6

    def score(weights: dict[str, float]) -> float:
        return mean_agreement(spec, combine_outputs(spec, weights, held_out), held_out_exact)

    best_single = max(mean_agreement(spec, o, held_out_exact) for o in held_out.values())
    assert score(calibrated) > score(in_sample) + 0.1
    assert score(calibrated) >= best_single - 0.01


@pytest.mark.trainer
def test_a_noise_target_is_served_by_its_prior(tmp_path) -> None:
    """Nothing predicts `noise`: its links are not shipped (listed as dropped), its ensemble
    reads nothing, and the prior serves it with its held-out figure. The links between the
    other models still ship."""
    from agent.selection import Problem
    from links_tflite.bundle import load_bundle
    from offline_trainer.links import LinkTraining
    from offline_trainer.train_links import train_bundle_report
    from tests.support.synthetic import make_recording

    recording = make_recording(n=240, models=("digit", "parity", "noise"))
    report = train_bundle_report(recording.save(tmp_path / "rec.npz"), tmp_path / "bundle",
                                 0.7, LinkTraining(epochs=40))
    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.links_into("noise") == []
    assert {(d["source"], d["target"]) for d in bundle.manifest["dropped_links"]} >= {
        ("digit", "noise"), ("parity", "noise")}
    assert bundle.link("digit", "parity") is not None
    assert not any((tmp_path / "bundle" / "links").glob("*__noise*"))
    assert bundle.ensembles["noise"].sources == ()

    predictor = EnsemblePredictor(bundle)
    assert predictor.needed_links({"digit", "parity"}, ["noise"]) == []
    predictor.prepare({"digit", "parity"}, ["noise", "digit"])
    with pytest.raises(LookupError):
        predictor.predict("noise", {"digit": recording.outputs["digit"][0]})
    served = predictor.prior("noise")
    assert int(np.argmax(served.value)) == 0 and served.sources == ()
    assert served.est_agreement == pytest.approx(report.priors["noise"].held_out)
    assert 0.45 < bundle.profile.priors["noise"] < 0.75  # the share of class 0, held out
    # a target without links costs the selection nothing and is scored 0 by it
    problem = Problem(models=tuple(bundle.models), model_costs={}, link_costs={},
                      profile=bundle.profile)
    assert problem.ensemble_sources(frozenset({"digit"}), "noise") == []
    assert bundle.profile.ensemble_agreement("noise", frozenset({"digit", "parity"})) == 0.0


def test_a_regression_link_is_clamped_where_it_runs() -> None:
    """VectorLink (what open_link makes of a bundle's link file) clamps batch and frame."""
    from links_tflite.ensemble import VectorLink

    class Logits:
        def __call__(self, batch: np.ndarray) -> np.ndarray:
            return np.asarray(batch, np.float32) * 10

        def run_one(self, example: np.ndarray) -> np.ndarray:
            return np.asarray(example, np.float32) * 10

    bounds = (np.array([0.0], np.float32), np.array([4.0], np.float32))
    link = VectorLink(Logits(), TaskSpec("regression", 1), bounds)  # type: ignore[arg-type]
    np.testing.assert_array_equal(link(np.array([[-1.0], [0.2], [3.0]])), [[0.0], [2.0], [4.0]])
    np.testing.assert_array_equal(link.run_one(np.array([0.9])), [4.0])
    unbounded = VectorLink(Logits(), TaskSpec("regression", 1))  # type: ignore[arg-type]
    np.testing.assert_array_equal(unbounded.run_one(np.array([0.9])), [9.0])


def test_the_probe_sees_a_bent_relation_and_no_relation() -> None:
    """The probe reads parity from a 10-class digit (not linear in the class index, linear in
    the one-hot) and finds nothing in noise; on few check frames it gives no verdict."""
    from offline_trainer.probe import MIN_CHECK_FRAMES, probe_scores
    from tests.support.synthetic import make_recording

    recording = make_recording(n=400, models=("digit", "parity", "noise"))
    tasks, out = recording.tasks, recording.outputs
    fit, check = slice(0, 300), slice(300, 400)
    parity = probe_scores(tasks["digit"], tasks["parity"], out["digit"][fit],
                          out["parity"][fit], out["digit"][check], out["parity"][check])
    assert parity is not None and parity.mean() > 0.9
    noise = probe_scores(tasks["digit"], tasks["noise"], out["digit"][fit], out["noise"][fit],
                         out["digit"][check], out["noise"][check])
    prior = fit_prior(tasks["noise"], out["noise"][fit])
    assert noise is not None and noise.mean() <= mean_agreement(
        tasks["noise"], prior_outputs(prior, 100), out["noise"][check]) + 0.02
    few = slice(300, 300 + MIN_CHECK_FRAMES - 1)
    assert probe_scores(tasks["digit"], tasks["parity"], out["digit"][fit], out["parity"][fit],
                        out["digit"][few], out["parity"][few]) is None
