"""`adapter = "python"`: a Python entry point `module:callable`."""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from agent.costs import MemoryProbe, memory_delta_mb
from agent.models import ADAPTERS, ModelAdapter, ModelFailure

if TYPE_CHECKING:
    from agent.config import ModelConfig

log = logging.getLogger(__name__)


def resolve_entry(entry: str) -> Any:
    """The object an entry point `module:attribute` names (the module imported)."""
    module_name, _, attribute = entry.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def warm_up(entries: Sequence[str], probe: MemoryProbe) -> tuple[list[object], float | None]:
    """Call each `module:callable` of the config's `warm_up` once, before any model is
    measured: what the model runtimes allocate once per process (measured on an H200: a CUDA
    context 612 MB of GPU memory and 107 MB of host memory, then cuDNN and cuBLAS 220 MB of
    host memory at the first convolution) is then not charged to whichever model is measured
    first. Returns what the calls returned (the caller holds it while measuring) and the
    memory they grew the probe's figure by. A call that fails raises `WarmUpError` naming it."""
    held: list[object] = []

    def call_all() -> None:
        for index, entry in enumerate(entries):
            try:
                held.append(resolve_entry(entry)())
            except (Exception, SystemExit, KeyboardInterrupt) as exc:
                raise WarmUpError(index, entry, exc) from None

    grown = memory_delta_mb(call_all, probe) if entries else 0.0
    if entries:
        log.info("warm-up %s: %.1f MB (%s probe)", ", ".join(entries), grown or 0.0, probe.name)
    return held, grown


class WarmUpError(RuntimeError):
    def __init__(self, index: int, entry: str, exc: BaseException) -> None:
        super().__init__(f"warm_up.{index}: {entry} failed: {type(exc).__name__}: {exc}")
        self.path = f"warm_up.{index}"


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
        with self._contained():
            target = resolve_entry(self.config.entry)
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
