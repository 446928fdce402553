"""Black-box model adapters: small classes behind one interface, one file each in
agent/adapters/, registered by name (ADAPTERS, agent.registry) and chosen by a model's
`adapter` in the config, whose choices are derived from the registry. The agent only sees
inputs and outputs.

A model call that raises, or outlives its timeout (`agent.runner`), is a `ModelFailure`;
`check_output` turns a NaN or a wrong-shaped output into one too.
"""

from __future__ import annotations

import gc
import logging
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from agent.heap import returning_memory
from agent.registry import Registry

if TYPE_CHECKING:
    from agent.config import ModelConfig

log = logging.getLogger(__name__)


class ModelAdapter:
    """One black-box model: load, infer on one frame's input, unload (freeing its memory)."""

    adapter: ClassVar[str]
    needs: ClassVar[Literal["path", "entry"]]  # what names the model in its config

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


ADAPTERS: Registry[type[ModelAdapter]] = Registry("adapter", key="adapter",
                                                  package="agent.adapters")


def make_model(config: ModelConfig) -> ModelAdapter:
    return ADAPTERS[config.adapter](config)
