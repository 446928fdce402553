"""The interpreter shim: LiteRT first, tflite_runtime second, a clear error when neither."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from links_tflite.interpreter import (
    InterpreterUnavailable,
    TFLiteRunner,
    float_compute_ops,
    interpreter_class,
)


def test_litert_is_preferred() -> None:
    name, cls = interpreter_class()
    assert name == "ai_edge_litert"
    assert cls.__module__.startswith("ai_edge_litert")


def test_clear_error_when_no_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes `import` raise ImportError, as if the wheel were absent.
    for module in ("ai_edge_litert", "ai_edge_litert.interpreter", "tflite_runtime",
                   "tflite_runtime.interpreter"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(InterpreterUnavailable, match="pip install ai-edge-litert") as caught:
        interpreter_class()
    assert "ai_edge_litert" in str(caught.value) and "tflite_runtime" in str(caught.value)


def test_falls_back_to_tflite_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where only tflite_runtime is installed (the legacy environment), it is used."""
    pytest.importorskip("tflite_runtime.interpreter",
                        reason="tflite_runtime is tested in its own numpy<2 environment")
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    assert interpreter_class()[0] == "tflite_runtime"


def test_runner_batches_and_single_frames(digits_build) -> None:
    runner = TFLiteRunner(digits_build.model_file("digit"))
    from links_tflite.recording import Recording

    frames = Recording.load(digits_build.stream).inputs["image"][:7]
    batch = runner(frames)
    assert batch.shape == (7, 10)
    singles = np.stack([runner.run_one(frame) for frame in frames])
    np.testing.assert_allclose(batch, singles, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batch.sum(axis=1), 1.0, rtol=1e-5)
    assert float_compute_ops(runner)  # a float model: its compute ops take float operands


def test_missing_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="TFLite file not found"):
        TFLiteRunner(tmp_path / "none.tflite")
