"""The interpreter shim: one way to run a .tflite file, whichever runtime the box has.

LiteRT (`ai_edge_litert`) is preferred; `tflite_runtime` (frozen at 2.14, numpy<2) is the
fallback for older boxes. TensorFlow's own interpreter is deliberately not a candidate: the
device side must never import TensorFlow.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

RUNTIMES: tuple[tuple[str, str], ...] = (
    ("ai_edge_litert", "ai_edge_litert.interpreter"),
    ("tflite_runtime", "tflite_runtime.interpreter"),
)


class InterpreterUnavailable(RuntimeError):
    """No TFLite runtime could be imported."""


def interpreter_class() -> tuple[str, type]:
    """The first importable runtime's Interpreter class, with the runtime's name."""
    failures = []
    for name, module_name in RUNTIMES:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # a broken wheel raises more than ImportError
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        return name, module.Interpreter
    raise InterpreterUnavailable(
        "no TFLite runtime found; install 'ai-edge-litert' (pip install ai-edge-litert) or, on "
        "older boxes, 'tflite-runtime' with numpy<2. Tried: " + "; ".join(failures)
    )


Converter = Callable[[np.ndarray], np.ndarray]


def quantizer(detail: dict[str, Any]) -> Converter:
    """float32 -> the tensor's type, with its dtype and parameters read once, not per call
    (runners keep one per tensor: this sits on the per-frame path)."""
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return lambda values: values.astype(dtype, copy=False)
    scale, zero_point = detail["quantization"]
    if scale == 0:  # a plain integer input: token ids, which travel as float32
        return lambda values: np.rint(values).astype(dtype)
    info = np.iinfo(dtype)
    low, high = info.min, info.max
    return lambda values: np.clip(np.round(values / scale + zero_point), low, high).astype(dtype)


def dequantizer(detail: dict[str, Any]) -> Converter:
    """The tensor's type -> float32 (see quantizer)."""
    if np.dtype(detail["dtype"]).kind == "f":
        return lambda values: values.astype(np.float32, copy=False)
    scale, zero_point = detail["quantization"]
    if scale == 0:
        return lambda values: values.astype(np.float32)
    return lambda values: ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)


def open_interpreter(path: Path, num_threads: int) -> tuple[str, Any]:
    """(runtime name, interpreter) for a .tflite file, with a clear error if it is missing."""
    if not path.is_file():
        raise FileNotFoundError(f"TFLite file not found: {path}")
    runtime, cls = interpreter_class()
    return runtime, cls(model_path=str(path), num_threads=num_threads)


def interpreter_ops(interpreter: Any) -> list[tuple[str, tuple[str, ...]]]:
    """An interpreter's (op name, operand dtypes) in execution order, delegate placeholders
    left out."""
    return [
        (d["op_name"], tuple(np.dtype(t).name for t in d.get("operand_types", ())))
        for d in interpreter._get_ops_details()
        if d["op_name"] != "DELEGATE"
    ]


class TFLiteRunner:
    """A loaded .tflite file with one input and one output, run on batches.

    Integer inputs and outputs are (de)quantized here, so callers always speak float32.
    The batch dimension is resized on demand and remembered, since resizing reallocates.
    """

    def __init__(self, path: str | Path, num_threads: int = 1) -> None:
        self.path = Path(path)
        self.runtime, self._interpreter = open_interpreter(self.path, num_threads)
        self._interpreter.allocate_tensors()
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(
                f"{self.path}: expected 1 input and 1 output, "
                f"found {len(inputs)} and {len(outputs)}"
            )
        self._batch = int(inputs[0]["shape"][0])
        self._example_shape = tuple(int(d) for d in inputs[0]["shape"][1:])
        self._bind(inputs[0], outputs[0])

    def _bind(self, input_detail: dict[str, Any], output_detail: dict[str, Any]) -> None:
        """Remember the tensors and their converters (again after each reallocation)."""
        self._input, self._output = input_detail, output_detail
        self._input_index, self._output_index = input_detail["index"], output_detail["index"]
        self._to_input = quantizer(input_detail)
        self._from_output = dequantizer(output_detail)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example (batch dimension left out)."""
        return self._example_shape

    @property
    def output_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self._interpreter.get_output_details()[0]["shape"][1:])

    def _resize(self, batch: int) -> None:
        if batch == self._batch:
            return
        self._interpreter.resize_tensor_input(
            self._input_index, [batch, *self._example_shape], strict=False
        )
        self._interpreter.allocate_tensors()
        self._bind(self._interpreter.get_input_details()[0],
                   self._interpreter.get_output_details()[0])
        self._batch = batch

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Run a batch (leading dimension = examples) and return float32 outputs."""
        values = np.asarray(batch, dtype=np.float32)
        if values.shape[1:] != self._example_shape:
            values = values.reshape(values.shape[0], *self._example_shape)
        self._resize(values.shape[0])
        self._interpreter.set_tensor(self._input_index, self._to_input(values))
        self._interpreter.invoke()
        return self._from_output(self._interpreter.get_tensor(self._output_index))

    def run_one(self, example: np.ndarray) -> np.ndarray:
        """Run one example (no batch dimension)."""
        return self(np.asarray(example, dtype=np.float32)[None, ...])[0]

    def ops(self) -> list[tuple[str, tuple[str, ...]]]:
        """(op name, operand dtypes) in execution order, delegate placeholders left out."""
        return interpreter_ops(self._interpreter)

    def op_types(self) -> list[str]:
        return [name for name, _ in self.ops()]


# Ops whose job is to move between float and int8 at the edges of a quantized graph.
BOUNDARY_OPS = frozenset({"QUANTIZE", "DEQUANTIZE"})


def float_compute_ops(runner: TFLiteRunner | MultiTensorRunner) -> list[str]:
    """Compute ops that still take float operands: empty for a fully int8 graph."""
    return [
        name
        for name, operand_types in runner.ops()
        if name not in BOUNDARY_OPS and any(t.startswith("float") for t in operand_types)
    ]


class MultiTensorRunner:
    """A loaded .tflite file with named inputs and outputs (a decoder step, an encoder).

    Tensors are addressed by the names of the file's `serving_default` signature (the Keras
    input names; outputs `output_0`, `output_1`, ... in the Keras model's order), because the
    order of the interpreter's tensor lists is not the model's order. Every input is resized to
    the batch of the call; callers speak float32 (token ids included), as with TFLiteRunner.
    """

    def __init__(self, path: str | Path, num_threads: int = 1) -> None:
        self.path = Path(path)
        self.runtime, self._interpreter = open_interpreter(self.path, num_threads)
        signatures = self._interpreter._get_full_signature_list()
        if len(signatures) != 1:
            raise ValueError(f"{self.path}: expected one signature, found {sorted(signatures)}")
        signature = next(iter(signatures.values()))
        self._input_index: dict[str, int] = dict(signature["inputs"])
        self._output_index: dict[str, int] = dict(signature["outputs"])
        self._interpreter.allocate_tensors()
        self._details: dict[int, dict[str, Any]] = {}
        self._converters: dict[int, Converter] = {}
        self._shapes = {
            name: tuple(int(d) for d in self._detail(index)["shape"][1:])
            for name, index in self._input_index.items()
        }
        self._batch = int(self._detail(next(iter(self._input_index.values())))["shape"][0])

    def _detail(self, index: int) -> dict[str, Any]:
        if index not in self._details:
            self._details = {
                d["index"]: d
                for d in (*self._interpreter.get_input_details(),
                          *self._interpreter.get_output_details())
            }
        return self._details[index]

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(self._input_index)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(sorted(self._output_index))

    def input_shape(self, name: str) -> tuple[int, ...]:
        """Shape of one example of input `name` (batch dimension left out)."""
        return self._shapes[name]

    def _resize(self, batch: int) -> None:
        if batch == self._batch:
            return
        for name, index in self._input_index.items():
            self._interpreter.resize_tensor_input(index, [batch, *self._shapes[name]],
                                                  strict=False)
        self._interpreter.allocate_tensors()
        self._details = {}
        self._converters = {}
        self._batch = batch

    def _converter(self, index: int) -> Converter:
        """The tensor's quantizer (an input) or dequantizer (an output), made once."""
        if index not in self._converters:
            detail = self._detail(index)
            is_input = index in self._input_index.values()
            self._converters[index] = (quantizer if is_input else dequantizer)(detail)
        return self._converters[index]

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run a batch given as {input name: array}; returns {output name: float32 array}."""
        missing = sorted(set(self._input_index) - set(inputs))
        if missing:
            raise ValueError(f"{self.path}: missing inputs {missing}")
        batch = {n: np.asarray(inputs[n], dtype=np.float32) for n in self._input_index}
        sizes = {v.shape[0] for v in batch.values()}
        if len(sizes) != 1:
            raise ValueError(f"{self.path}: inputs differ in batch size {sorted(sizes)}")
        self._resize(sizes.pop())
        for name, index in self._input_index.items():
            values = batch[name].reshape(batch[name].shape[0], *self._shapes[name])
            self._interpreter.set_tensor(index, self._converter(index)(values))
        self._interpreter.invoke()
        return {
            name: self._converter(index)(self._interpreter.get_tensor(index))
            for name, index in self._output_index.items()
        }

    def ops(self) -> list[tuple[str, tuple[str, ...]]]:
        return interpreter_ops(self._interpreter)

    def op_types(self) -> list[str]:
        return [name for name, _ in self.ops()]


def open_runner(path: str | Path, num_threads: int = 1) -> TFLiteRunner | MultiTensorRunner:
    """The right runner for a file: TFLiteRunner for one input and one output, else named."""
    try:
        return TFLiteRunner(path, num_threads)
    except ValueError:
        return MultiTensorRunner(path, num_threads)
