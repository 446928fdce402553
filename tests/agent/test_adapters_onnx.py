"""The ONNX Runtime adapter (optional extra `onnx`): a model built here with onnx.helper runs
in the agent next to TFLite models, and its outputs are the ones numpy computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.config import load_config
from agent.output import model_entries
from agent.scheduler import Agent

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def write_parity_onnx(path: Path, weights: np.ndarray, bias: np.ndarray) -> None:
    """softmax(reshape(x, [N, 64]) @ W + b): a stand-in 'parity' model with two classes."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["flat"]),
         helper.make_node("MatMul", ["flat", "W"], ["logits0"]),
         helper.make_node("Add", ["logits0", "b"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["y"], axis=-1)],
        "parity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(np.array([-1, 64], dtype=np.int64), "shape"),
         numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def test_onnx_model_runs_in_the_agent(digits_fixture, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    weights = rng.normal(0, 0.1, (64, 2)).astype(np.float32)
    bias = np.array([0.1, -0.1], dtype=np.float32)
    write_parity_onnx(tmp_path / "parity.onnx", weights, bias)
    root = digits_fixture.root
    config = tmp_path / "agent.toml"
    config.write_text(
        f'device_id = "onnx"\n[bundle]\npath = "{root / "bundle"}"\n'
        f'[source]\ntype = "replay"\npath = "{root / "stream.npz"}"\n[selection]\npolicy = "all"\n'
        f'[profiling]\nwarmup_runs = 1\ndelay_runs = 2\n'
        f'[[models]]\nid = "digit"\npath = "{root / "models/digit.tflite"}"\ninput = "image"\n'
        f'[[models]]\nid = "parity"\nadapter = "onnx"\npath = "parity.onnx"\ninput = "image"\n'
        f"threads = 1\n")
    agent = Agent.from_config(load_config(config))
    frames = agent.start()
    assert agent.selection is not None and agent.selection.active == {"digit", "parity"}
    assert agent.models["parity"].loaded
    for _ in range(3):
        frame = next(frames)
        parity = {p["model"]: p for p in model_entries(agent.process(frame))}["parity"]
        assert parity["provenance"] == "executed"
        logits = frame.modalities["image"].reshape(64).astype(np.float32) @ weights + bias
        expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        np.testing.assert_allclose(parity["value"], expected, rtol=1e-5, atol=1e-6)
    agent.models["parity"].unload()
    assert not agent.models["parity"].loaded
