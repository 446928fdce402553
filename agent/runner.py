"""The watchdog: model calls run in a daemon thread so that one that hangs can be abandoned.

A hung native call cannot be killed from Python, so its thread is left behind (it ends once
the call returns, if ever) and the caller goes on with a fresh `Runner`. Handing work to
another thread costs far more than the bookkeeping of a call on a small box (a wake-up each
way: 0.1 ms of CPU per handoff measured on a 2-core VM, against 4-5 us to call inline), so a
runner takes a whole batch (a frame's model calls) per handoff, and each model call inside
it announces its own deadline (`guard`). The waiting caller wakes only when the batch is
done or a deadline has passed; it then abandons the runner, and the rest of the batch is
not run there: the runner's next `guard` raises `Abandoned`, which no `except Exception`
catches, so nothing the abandoned thread still does reaches the agent's state.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from agent.models import ModelFailure

log = logging.getLogger(__name__)

T = TypeVar("T")

class Abandoned(BaseException):
    """Raised in an abandoned runner's thread once its hung call returns (BaseException, so
    that the agent's `except Exception` around model calls lets it through)."""


class Runner:
    """One daemon thread running batches of model calls, one batch at a time."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # One batch at a time, and a hung runner is never used again, so one event and one
        # result slot serve every batch (no allocation per frame).
        self._done = threading.Event()
        self._result: tuple[bool, Any] = (False, None)
        self._lock = threading.Lock()  # orders a deadline's check against the call's return
        self._watch: tuple[str, float, float] | None = None  # model id, deadline, timeout
        self.hung_on: str | None = None  # the model whose call outlived its deadline
        self._thread = threading.Thread(target=self._loop, name=f"models-{name}", daemon=True)
        self._thread.start()

    @property
    def hung(self) -> bool:
        return self.hung_on is not None

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                self._result = (True, job())
            except Abandoned:
                return
            except BaseException as exc:  # handed to the caller, whatever it is
                self._result = (False, exc)
            self._done.set()

    def on_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def guard(self, model_id: str, timeout_s: float, call: Callable[[], T]) -> T:
        """`call()` on the runner's thread under a deadline the waiting caller checks."""
        if self.hung:
            raise Abandoned
        # No lock here: the caller only abandons a runner whose watch is set and past its
        # deadline, and between two calls there is none.
        self._watch = (model_id, time.monotonic() + timeout_s, timeout_s)
        try:
            return call()
        finally:
            with self._lock:
                self._watch = None
                if self.hung:
                    raise Abandoned  # the result is no one's any more

    def run(self, job: Callable[[], T], wait_s: float) -> T:
        """`job()` on the runner's thread. Raises ModelFailure('timeout') naming the model
        (`hung_on`) whose guarded call outlived its deadline; the runner is then hung.
        `wait_s`: how long to wait before looking again while no call is guarded (the
        batch's own work between calls): the shortest timeout in the batch, so a hang is seen
        within twice its timeout, and a frame that goes well wakes the caller once."""
        if self.hung:
            raise RuntimeError(f"runner {self.name} is hung")
        self._done.clear()
        self._jobs.put(job)
        while not self._done.wait(self._wait_s(wait_s)):
            with self._lock:
                watch = self._watch
                if watch is None or time.monotonic() < watch[1]:
                    continue
                self.hung_on = watch[0]
            self._jobs.put(None)  # the thread ends once the hung call returns, if ever
            raise ModelFailure("timeout", f"model {watch[0]}: no answer within "
                                          f"{watch[2] * 1e3:.0f} ms")
        ok, value = self._result
        self._result = (False, None)
        if ok:
            return value
        raise value

    def _wait_s(self, idle_s: float) -> float:
        watch = self._watch
        return idle_s if watch is None else max(0.0, watch[1] - time.monotonic())

    @property
    def busy(self) -> bool:
        """Still running an abandoned call."""
        return self.hung and self._thread.is_alive()

    def join(self, timeout_s: float) -> bool:
        """Wait for an abandoned call to return (tests, shutdown); True if the thread ended."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def stop(self) -> None:
        if not self.hung:
            self._jobs.put(None)
