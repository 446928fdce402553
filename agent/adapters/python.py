"""`adapter = "python"`: a Python entry point `module:callable`."""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from agent.models import ADAPTERS, ModelAdapter, ModelFailure

if TYPE_CHECKING:
    from agent.config import ModelConfig

log = logging.getLogger(__name__)


@ADAPTERS.register
class PythonModel(ModelAdapter):
    """A Python entry point `module:callable`, named in the local TOML only. A class is
    instantiated on load (and its `close()` called on unload, where it has one); a function
    is called as it is."""

    adapter: ClassVar[str] = "python"
    needs: ClassVar[Literal["path", "entry"]] = "entry"

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
