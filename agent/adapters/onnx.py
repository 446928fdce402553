"""`adapter = "onnx"`: an .onnx file run by ONNX Runtime (the optional extra `onnx`)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from agent.models import ADAPTERS, ModelAdapter

if TYPE_CHECKING:
    from agent.config import ModelConfig

log = logging.getLogger(__name__)


@ADAPTERS.register
class OnnxModel(ModelAdapter):
    """An .onnx file (one input, one output) run by ONNX Runtime on the CPU with `threads`
    intra-op threads. onnxruntime is the optional extra `onnx`; without it, loading fails
    with an error saying so, and the model is marked failed like any other."""

    adapter: ClassVar[str] = "onnx"
    needs: ClassVar[Literal["path", "entry"]] = "path"

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
