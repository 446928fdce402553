"""Black-box model adapters: small classes behind one interface, registered by name and
chosen by a model's `adapter` in the config. The agent only sees inputs and outputs."""

from __future__ import annotations

import gc
import logging
from typing import ClassVar

import numpy as np

from agent.config import ModelConfig
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

    def unload(self) -> None:
        if self._runner is not None:
            self._runner = None
            gc.collect()
            log.info("model %s unloaded", self.id)

    def infer(self, example: np.ndarray) -> np.ndarray:
        if self._runner is None:
            raise RuntimeError(f"model {self.id} is not loaded")
        return self._runner.run_one(example)


ADAPTERS: dict[str, type[ModelAdapter]] = {TFLiteModel.adapter: TFLiteModel}


def make_model(config: ModelConfig) -> ModelAdapter:
    return ADAPTERS[config.adapter](config)
