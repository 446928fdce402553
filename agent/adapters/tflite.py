"""`adapter = "tflite"`: a .tflite file run by LiteRT."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np

from agent.models import ADAPTERS, ModelAdapter
from links_tflite.interpreter import TFLiteRunner

if TYPE_CHECKING:
    from agent.config import ModelConfig

log = logging.getLogger(__name__)


@ADAPTERS.register
class TFLiteModel(ModelAdapter):
    """A .tflite file run by LiteRT with an explicit thread count."""

    adapter: ClassVar[str] = "tflite"
    needs: ClassVar[Literal["path", "entry"]] = "path"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self._runner: TFLiteRunner | None = None

    @property
    def loaded(self) -> bool:
        return self._runner is not None

    def load(self) -> None:
        if self._runner is None:
            assert self.config.path is not None  # the config's validator requires it
            self._runner = TFLiteRunner(self.config.path, num_threads=self.config.threads)
            log.info("model %s loaded from %s (%s)", self.id, self.config.path,
                     self._runner.runtime)

    def release(self) -> None:
        self._runner = None

    def infer(self, example: np.ndarray) -> np.ndarray:
        if self._runner is None:
            raise RuntimeError(f"model {self.id} is not loaded")
        return self._runner.run_one(example)
