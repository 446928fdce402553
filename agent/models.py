"""Black-box model adapters: small classes behind one interface, registered by name and
chosen by a model's `adapter` in the config. The agent only sees inputs and outputs.

A model call that raises, or outlives its timeout (`agent.runner`), is a `ModelFailure`;
`check_output` turns a NaN or a wrong-shaped output into one too.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import numpy as np

from agent.config import ModelConfig
from agent.heap import returning_memory
from links_tflite.interpreter import TFLiteRunner

log = logging.getLogger(__name__)


class ModelAdapter:
    """One black-box model: load, infer on one frame's input, unload (freeing its memory)."""

    adapter: ClassVar[str]

    def __init__(self, config: ModelConfig) -> None:
        self.config = config

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def input_modality(self) -> str:
        return self.config.input

    @property
    def loaded(self) -> bool:
        raise NotImplementedError

    def load(self) -> None:
        raise NotImplementedError

    def unload(self) -> None:
        """Drop the model and give its memory back to the OS now, not at the next trim (see
        agent.heap): what the budget frees must be free on the box."""
        if self.loaded:
            with returning_memory():
                self.release()
                gc.collect()  # the model's cycles, freed under the low trim threshold
            log.info("model %s unloaded", self.id)

    def release(self) -> None:
        """Drop every reference to the loaded model (`unload` does the rest)."""
        raise NotImplementedError

    def infer(self, example: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class TFLiteModel(ModelAdapter):
    """A .tflite file run by LiteRT with an explicit thread count."""

    adapter: ClassVar[str] = "tflite"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self._runner: TFLiteRunner | None = None

    @property
    def loaded(self) -> bool:
        return self._runner is not None

    def load(self) -> None:
        if self._runner is None:
            self._runner = TFLiteRunner(self.config.path, num_threads=self.config.threads)
            log.info("model %s loaded from %s (%s)", self.id, self.config.path,
                     self._runner.runtime)

    def release(self) -> None:
        self._runner = None

    def infer(self, example: np.ndarray) -> np.ndarray:
        if self._runner is None:
            raise RuntimeError(f"model {self.id} is not loaded")
        return self._runner.run_one(example)


class PythonModel(ModelAdapter):
    """A Python entry point `module:callable`, named in the local TOML only. A class is
    instantiated on load (and its `close()` called on unload, where it has one); a function
    is called as it is."""

    adapter: ClassVar[str] = "python"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self._call: Callable[[np.ndarray], Any] | None = None

    @property
    def loaded(self) -> bool:
        return self._call is not None

    def load(self) -> None:
        if self._call is not None:
            return
        assert self.config.entry is not None
        module_name, _, attribute = self.config.entry.partition(":")
        with self._contained():
            target = getattr(importlib.import_module(module_name), attribute)
            self._call = target() if isinstance(target, type) else target
        if not callable(self._call):
            self._call = None
            raise TypeError(f"model {self.id}: {self.config.entry} is not callable")
        log.info("model %s loaded from %s", self.id, self.config.entry)

    def release(self) -> None:
        close = getattr(self._call, "close", None)
        self._call = None
        if callable(close):
            try:
                close()
            except Exception:
                log.exception("model %s: close() failed", self.id)

    def infer(self, example: np.ndarray) -> np.ndarray:
        if self._call is None:
            raise RuntimeError(f"model {self.id} is not loaded")
        with self._contained():
            return np.asarray(self._call(example), dtype=np.float32)

    @contextlib.contextmanager
    def _contained(self) -> Iterator[None]:
        """`sys.exit()` or `KeyboardInterrupt` inside the model's code is the model's failure
        (excluded, retried like any other), not the agent's end."""
        try:
            yield
        except (SystemExit, KeyboardInterrupt) as exc:
            raise ModelFailure("error", f"model {self.id}: raised {type(exc).__name__}"
                                        f"({exc})") from None


class OnnxModel(ModelAdapter):
    """An .onnx file (one input, one output) run by ONNX Runtime on the CPU with `threads`
    intra-op threads. onnxruntime is the optional extra `onnx`; without it, loading fails
    with an error saying so, and the model is marked failed like any other."""

    adapter: ClassVar[str] = "onnx"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self._session: Any = None
        self._input: Any = None

    @property
    def loaded(self) -> bool:
        return self._session is not None

    def load(self) -> None:
        if self._session is not None:
            return
        try:
            import onnxruntime
        except ImportError as exc:
            raise RuntimeError("adapter 'onnx' needs onnxruntime: "
                               "pip install 'mlink-edge[onnx]'") from exc
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.config.threads
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(str(self.config.path), sess_options=options,
                                               providers=["CPUExecutionProvider"])
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"{self.config.path}: expected 1 input and 1 output, "
                             f"found {len(inputs)} and {len(outputs)}")
        self._session, self._input = session, inputs[0]
        log.info("model %s loaded from %s (onnxruntime %s)", self.id, self.config.path,
                 onnxruntime.__version__)

    def release(self) -> None:
        self._session = self._input = None

    def infer(self, example: np.ndarray) -> np.ndarray:
        if self._session is None:
            raise RuntimeError(f"model {self.id} is not loaded")
        dims = self._input.shape[1:]
        values = np.asarray(example, dtype=np.float32)
        if all(isinstance(d, int) for d in dims):
            values = values.reshape(dims)
        return np.asarray(self._session.run(None, {self._input.name: values[None, ...]})[0][0])


ADAPTERS: dict[str, type[ModelAdapter]] = {
    TFLiteModel.adapter: TFLiteModel, PythonModel.adapter: PythonModel,
    OnnxModel.adapter: OnnxModel,
}


class ModelFailure(RuntimeError):
    """A model call that raised, timed out, or returned an unusable output."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind  # error, timeout, nan, shape
        super().__init__(message)


def check_output(model_id: str, value: Any, width: int) -> np.ndarray:
    """The output as a float32 vector of the task's width, or a ModelFailure."""
    try:
        array = np.asarray(value, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ModelFailure("shape", f"model {model_id}: output is not numeric ({exc})") from None
    if array.size != width:
        raise ModelFailure("shape", f"model {model_id}: output has {array.size} numbers, "
                                    f"its task expects {width}")
    if not np.isfinite(array).all():
        raise ModelFailure("nan", f"model {model_id}: output holds NaN or infinity")
    return array


def make_model(config: ModelConfig) -> ModelAdapter:
    return ADAPTERS[config.adapter](config)
