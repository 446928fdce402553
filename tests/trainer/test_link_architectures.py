"""Every link architecture trains on small data, converts, runs through links_tflite (LiteRT,
never TensorFlow) and matches its Keras original within a stated tolerance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from links_tflite.agreement import mean_agreement, strip_padding
from links_tflite.decoding import SequenceDecoder
from links_tflite.ensemble import open_link_files
from links_tflite.interpreter import MultiTensorRunner, float_compute_ops
from offline_trainer.export import QUANTIZATIONS, SEQUENCE_FLOOR, export_link
from offline_trainer.links import LinkTraining, architecture, train_link
from tests.support.synthetic import NAMES, VOCAB, make_recording

pytestmark = pytest.mark.trainer

# Tolerances, stated: a vector link's exported file gives the same class as the Keras link on
# >= 95% of held-out frames and its probabilities differ by at most 0.15; a sequence link's
# files decode the Keras link's tokens on >= SEQUENCE_FLOOR (97%) of tokens.
SAME_CLASS = 0.95
MAX_PROB_DIFF = 0.15
TRAIN, TEST = slice(0, 160), slice(160, 220)
TRAINING = LinkTraining(epochs=30)


@pytest.fixture(scope="module")
def recording():
    return make_recording(n=220, models=("digit", "parity", "spelled", "reversed"))


@pytest.mark.parametrize(
    ("source", "target", "kind"),
    [("digit", "parity", "vec2vec"), ("spelled", "digit", "seq2vec"),
     ("digit", "spelled", "vec2seq"), ("spelled", "reversed", "seq2seq")],
)
def test_architecture_trains_converts_and_matches_keras(recording, tmp_path: Path, source: str,
                                                        target: str, kind: str) -> None:
    tasks, outputs = recording.tasks, recording.outputs
    assert architecture(tasks[source], tasks[target]) == kind
    trained = train_link(tasks[source], tasks[target], outputs[source][TRAIN],
                         outputs[target][TRAIN], TRAINING)
    assert trained.architecture == kind
    exported = export_link(trained, tasks[target], tmp_path, f"{source}__{target}")
    assert exported.quantization in QUANTIZATIONS
    assert set(exported.parts.values()) == {"int8"}, exported.parts  # decoder step included
    runner = open_link_files(tasks[target], tmp_path / exported.file,
                             tmp_path / exported.decoder if exported.decoder else None)
    x, exact = outputs[source][TEST], outputs[target][TEST]
    shipped, floating = runner(x), trained.predict(x)
    if tasks[target].kind == "sequence":
        assert isinstance(runner, SequenceDecoder)
        assert runner.encoder.runtime == "ai_edge_litert"
        assert mean_agreement(tasks[target], shipped, floating) >= SEQUENCE_FLOOR
        # it decodes real sequences: the spelled names, ended by PAD
        assert mean_agreement(tasks[target], shipped, exact) >= 0.9
        words = {"".join(VOCAB[t] for t in strip_padding(row)) for row in shipped}
        expected = set(NAMES) if target == "spelled" else {n[::-1] for n in NAMES}
        assert len(words & expected) >= 5, words
    else:
        assert runner.runner.runtime == "ai_edge_litert"
        same = float(np.mean(np.argmax(shipped, 1) == np.argmax(floating, 1)))
        assert same >= SAME_CLASS, same
        assert float(np.max(np.abs(shipped - floating))) <= MAX_PROB_DIFF
        assert mean_agreement(tasks[target], shipped, exact) >= 0.9


def test_decoder_is_one_step_with_explicit_state(recording, tmp_path: Path) -> None:
    tasks, outputs = recording.tasks, recording.outputs
    trained = train_link(tasks["digit"], tasks["spelled"], outputs["digit"][TRAIN],
                         outputs["spelled"][TRAIN], LinkTraining(epochs=2))
    exported = export_link(trained, tasks["spelled"], tmp_path, "digit__spelled")
    step = MultiTensorRunner(tmp_path / exported.decoder)
    assert set(step.input_names) == {"token", "h", "c", "memory"}
    assert step.input_shape("token") == (1,)  # one token in, one step out
    units = step.input_shape("h")[0]
    out = step({"token": np.ones((3, 1)), "h": np.zeros((3, units)), "c": np.zeros((3, units)),
                "memory": np.zeros((3, *step.input_shape("memory")))})
    assert out["output_0"].shape == (3, tasks["spelled"].vocab_size)
    assert out["output_1"].shape == out["output_2"].shape == (3, units)
    # the state is really carried in and out: a different h changes the next logits
    moved = step({"token": np.ones((3, 1)), "h": np.ones((3, units)),
                  "c": np.zeros((3, units)),
                  "memory": np.zeros((3, *step.input_shape("memory")))})
    assert not np.allclose(out["output_0"], moved["output_0"])


def test_decoder_quality_gate_falls_back_for_that_part_only(recording, tmp_path: Path) -> None:
    """A decoder step that cannot decode like its float original (here: an unreachable floor)
    falls back, quantization by quantization, and the manifest fields say so."""
    tasks, outputs = recording.tasks, recording.outputs
    trained = train_link(tasks["digit"], tasks["spelled"], outputs["digit"][TRAIN],
                         outputs["spelled"][TRAIN], LinkTraining(epochs=2))
    exported = export_link(trained, tasks["spelled"], tmp_path, "digit__spelled",
                           sequence_floor=1.01)
    assert exported.parts == {"encoder": "int8", "decoder": "float16"}
    assert exported.quantization == "float16"
    assert float_compute_ops(MultiTensorRunner(tmp_path / exported.file)) == []


def test_decoder_near_ties_do_not_cost_int8(recording, tmp_path: Path) -> None:
    """Where the int8 files agree with the target model as well as the float link on rows the
    link did not fit, a decoder below the floor (differing from the float link only where
    it cannot tell tokens apart) stays int8."""
    tasks, outputs = recording.tasks, recording.outputs
    trained = train_link(tasks["digit"], tasks["spelled"], outputs["digit"][TRAIN],
                         outputs["spelled"][TRAIN], LinkTraining(epochs=2))
    check = (outputs["digit"][TEST], trained.predict(outputs["digit"][TEST]))
    exported = export_link(trained, tasks["spelled"], tmp_path, "digit__spelled",
                           sequence_floor=1.01, check=check, slack=1.0)
    assert exported.parts == {"encoder": "int8", "decoder": "int8"} and not exported.fallback
