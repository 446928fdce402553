"""The links are real int8 TFLite files and agree with their float Keras originals."""

from __future__ import annotations

import numpy as np

from links_tflite.agreement import agreement
from links_tflite.bundle import load_bundle
from links_tflite.interpreter import TFLiteRunner, float_compute_ops
from links_tflite.recording import Recording

FLOAT_TIE = 0.01  # float probabilities closer than this are a tie in the float link itself


def test_link_files_are_int8(digits_build) -> None:
    bundle = load_bundle(digits_build.bundle)
    assert len(bundle.links) == 6  # every ordered pair of the three models
    for link in bundle.links:
        runner = TFLiteRunner(bundle.path_of(link))
        assert link.quantization == "int8"
        assert float_compute_ops(runner) == [], link.name
        dense = [types for name, types in runner.ops() if name == "FULLY_CONNECTED"]
        assert len(dense) == 2, link.name  # Dense(2*out) and Dense(out)
        assert all(types[:2] == ("int8", "int8") for types in dense), (link.name, dense)


def int8_float_agreement(kind: str, spec, quantized: np.ndarray, floating: np.ndarray) -> float:
    """Share of frames where the int8 file agrees with the float link. For labels, the int8
    class must be the float link's class, or one the float link rates within FLOAT_TIE of it
    (where the float link itself cannot tell two classes apart, its argmax is arbitrary)."""
    if kind == "single_label":
        chosen = np.argmax(quantized, axis=1)
        rated = floating[np.arange(len(floating)), chosen]
        return float(np.mean(rated >= floating.max(axis=1) - FLOAT_TIE))
    return float(agreement(spec, quantized, floating).mean())


def test_int8_links_agree_with_float_originals(digits_build) -> None:
    recording = Recording.load(digits_build.recording)
    for result in digits_build.links:
        spec = recording.tasks[result.target]
        same = int8_float_agreement(spec.kind, spec, result.held_out_outputs,
                                    result.held_out_float)
        assert same >= 0.97, (result.source, result.target, same)
        # and the int8 file predicts the target model about as well as the float link, where
        # the float link tells its classes apart (parity->digit cannot: even digits all rate
        # about 0.2, and which of them either file picks is arbitrary)
        if spec.kind != "single_label" or near_tied_share(result.held_out_float) <= 0.03:
            assert result.agreement >= result.float_agreement - 0.03, result


def near_tied_share(probabilities: np.ndarray) -> float:
    """Share of frames whose two most probable classes are within FLOAT_TIE."""
    top = np.sort(probabilities, axis=1)[:, -2:]
    return float(np.mean(top[:, 1] - top[:, 0] < FLOAT_TIE))


def test_profile_is_measured_on_held_out_frames(digits_build) -> None:
    bundle = load_bundle(digits_build.bundle)
    recording = Recording.load(digits_build.recording)
    assert bundle.manifest["train_frames"] + bundle.profile.held_out_frames == len(recording)
    for result in digits_build.links:
        assert bundle.profile.link_agreement(result.source, result.target) == result.agreement
    # the subset table covers every non-empty subset of each target's two sources
    assert all(len(table) == 3 for table in bundle.profile.ensembles.values())
