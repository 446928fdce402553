"""Committed TFLite files give the outputs LiteRT gave when they were committed, through
whichever runtime the shim picks. `scripts/test-legacy.sh` runs this file again in an
environment with tflite-runtime and numpy<2 only (MLINK_EXPECT_RUNTIME=tflite_runtime)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from links_tflite.interpreter import TFLiteRunner, float_compute_ops

DATA = Path(__file__).resolve().parents[1] / "data"


def expected() -> dict[str, np.ndarray]:
    with np.load(DATA / "legacy_expected.npz", allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def test_the_expected_runtime_is_used() -> None:
    runner = TFLiteRunner(DATA / "model_parity.tflite")
    assert runner.runtime == os.environ.get("MLINK_EXPECT_RUNTIME", "ai_edge_litert")


def test_int8_link_outputs() -> None:
    data = expected()
    runner = TFLiteRunner(DATA / "link_digit__inkbox.tflite")
    assert float_compute_ops(runner) == []
    # int8 kernels may round differently between runtimes: one output quantization step
    np.testing.assert_allclose(runner(data["link_input"]), data["link_output"], atol=0.05)


def test_float_model_outputs() -> None:
    data = expected()
    runner = TFLiteRunner(DATA / "model_parity.tflite")
    np.testing.assert_allclose(runner(data["model_input"]), data["model_output"], atol=1e-5)
