"""The model executor: the black-box models, the watchdog their calls run under, each model's
health and its back-off after a failure.

A model that raises, outlives its `timeout_ms`, or returns NaN or the wrong shape fails: it is
excluded (`Health.failed`), and measured again once its back-off has ended (`[selection]
retry_after_s`, doubling up to `retry_max_s`); one whose call hung is retried only once that
call has returned (the status says `waiting_for_hung_call` meanwhile), on the first frame
after. Models with a timeout run on a `Runner` thread,
a frame's calls in one handoff (`run_models`; agent.runner says why). Every call's time and
every load's memory go into the cost book.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from agent.config import ModelConfig, SelectionConfig
from agent.costbook import CostBook
from agent.costs import MemoryProbe, memory_delta_mb
from agent.models import ModelAdapter, ModelFailure, check_output, make_model
from agent.runner import Runner
from agent.sources import Frame

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Ran:
    """A model's run on a frame."""

    output: np.ndarray
    latency_ms: float  # the inference alone
    elapsed_ms: float  # with loading, where it was loaded for the frame


Outcome = Ran | ModelFailure


@dataclass
class Health:
    """A model's failure state: `retry_at` (monotonic) is set while it is excluded."""

    failures: int = 0  # in a row
    total_failures: int = 0
    retry_at: float | None = None
    backoff_s: float = 0.0
    last_error: str | None = None
    last_kind: str | None = None
    waiting_logged: bool = False  # said once that its retry waits for its hung call

    @property
    def failed(self) -> bool:
        return self.retry_at is not None


class ModelExecutor:
    def __init__(self, models: dict[str, ModelAdapter], widths: Mapping[str, int],
                 costs: CostBook, probe: MemoryProbe, backoff: SelectionConfig,
                 runner_name: str = "agent",
                 make: Callable[[ModelConfig], ModelAdapter] = make_model) -> None:
        self.models = models
        self.widths = widths  # each model's output width (its task's), to check outputs
        self.costs = costs
        self.probe = probe
        self.backoff = backoff  # retry_after_s, retry_max_s
        self.health: dict[str, Health] = {m: Health() for m in models}
        self.runner: Runner | None = None  # model calls with a timeout run there
        self.abandoned: dict[str, Runner] = {}  # model id -> the runner left in its hung call
        self._runner_name = runner_name
        self.make = make  # a fresh adapter for a model config

    def health_of(self, model_id: str) -> Health:
        """A model's failure state; models enabled later (remote config) start healthy."""
        return self.health.setdefault(model_id, Health())

    def available(self) -> list[str]:
        return [m for m in self.models if not self.health_of(m).failed]

    def unavailable(self) -> frozenset[str]:
        return frozenset(m for m in self.models if self.health_of(m).failed)

    # -- guarded calls -------------------------------------------------------------------------
    def _runner(self) -> Runner:
        """The runner for model calls: a fresh one after the last was abandoned."""
        if self.runner is None or self.runner.hung:
            self.runner = Runner(self._runner_name)
        return self.runner

    def _call(self, model_id: str, call: Callable[[], T], timeout_s: float) -> T:
        """`call` under the model's timeout (inline where it is 0): guarded on the runner's
        thread inside a batch, else handed to the runner alone. Any error is a ModelFailure."""
        try:
            if timeout_s <= 0:
                return call()
            runner = self._runner()
            if runner.on_thread():
                return runner.guard(model_id, timeout_s, call)
            try:
                return runner.run(lambda: runner.guard(model_id, timeout_s, call), timeout_s)
            finally:
                if runner.hung:
                    self._abandon(runner)
        except ModelFailure:
            raise
        except Exception as exc:
            raise ModelFailure("error", f"model {model_id}: {type(exc).__name__}: {exc}") from exc

    def _abandon(self, runner: Runner) -> None:
        """Keep the runner left in a hung call, by the model's id (see retry_due)."""
        assert runner.hung_on is not None
        self.abandoned[runner.hung_on] = runner
        if self.runner is runner:
            self.runner = None

    def close(self) -> None:
        """End the runner's thread (an abandoned one ends when its hung call returns)."""
        if self.runner is not None:
            self.runner.stop()
            self.runner = None

    # -- loading and running ---------------------------------------------------------------
    def load(self, model_id: str) -> None:
        model = self.models[model_id]
        if not model.loaded:
            self.costs.model(model_id).begin_load()
            self._call(model_id, model.load, model.config.load_timeout_s)

    def unload_all(self, keep: Iterable[str] = ()) -> None:
        kept = set(keep)
        for model_id, model in self.models.items():
            if model_id not in kept:
                model.unload()

    def infer(self, model_id: str, example: np.ndarray) -> tuple[np.ndarray, float]:
        """The checked output and the inference time in ms (timed where the model runs)."""
        value, ms = self._infer_unchecked(model_id, example)
        return self._accept(model_id, value, ms), ms

    def _infer_unchecked(self, model_id: str, example: np.ndarray) -> tuple[Any, float]:
        model = self.models[model_id]

        def timed() -> tuple[Any, float]:
            start = time.perf_counter()
            value = model.infer(example)
            return value, (time.perf_counter() - start) * 1e3

        return self._call(model_id, timed, model.config.timeout_ms / 1e3)

    def _accept(self, model_id: str, value: Any, ms: float) -> np.ndarray:
        """The output checked, and its inference time counted."""
        output = check_output(model_id, value, self.widths[model_id])
        self.costs.model(model_id).add_delay(ms)
        return output

    def run(self, model_id: str, frame: Frame) -> tuple[np.ndarray, float]:
        """Run one model on one frame, loading it first where needed (its memory measured)."""
        example = frame.modalities[self.models[model_id].input_modality]
        if self.models[model_id].loaded:
            return self.infer(model_id, example)
        result: list[tuple[np.ndarray, float]] = []

        def load_and_run() -> None:
            self.load(model_id)
            result.append(self.infer(model_id, example))

        memory = memory_delta_mb(load_and_run, self.probe)
        self.costs.model(model_id).record_memory(memory)
        return result[0]

    def run_models(self, frame: Frame, model_ids: list[str],
                   then: Callable[[dict[str, Ran]], T] | None = None,
                   ) -> tuple[dict[str, Outcome], T | None]:
        """Run the models on the frame in order, in one handoff to the runner where any has
        a timeout. A model whose call hangs is a timeout failure, and the rest run on a fresh
        runner. Where every model succeeds, `then(outcomes)` runs in the same handoff."""
        outcomes: dict[str, Outcome] = {}
        result: T | None = None
        pending = list(model_ids)
        while pending:
            def job(batch: tuple[str, ...] = tuple(pending)) -> T | None:
                self._run_batch(frame, batch, outcomes)
                ran = {m: o for m, o in outcomes.items() if isinstance(o, Ran)}
                return None if then is None or len(ran) < len(outcomes) else then(ran)

            timeouts = [self.models[m].config.timeout_ms / 1e3 for m in pending]
            if max(timeouts) <= 0:
                return outcomes, job()
            runner = self._runner()
            try:
                result = runner.run(job, min(t for t in timeouts if t > 0))
            except ModelFailure as failure:  # a timeout: the runner is left in the call
                assert runner.hung_on is not None
                outcomes[runner.hung_on] = failure
                self._abandon(runner)
            pending = [m for m in pending if m not in outcomes]
        return outcomes, result

    def _run_batch(self, frame: Frame, model_ids: Iterable[str],
                   outcomes: dict[str, Outcome]) -> None:
        """The loaded models' calls back to back, then their outputs checked and counted:
        a model streams its weights through the caches, so the agent's own work after each
        call would find them cold every time; together, only the first does."""
        unchecked: list[tuple[str, Any, float, float]] = []
        for model_id in model_ids:
            start = time.perf_counter()
            model = self.models[model_id]
            try:
                if model.loaded:
                    value, ms = self._infer_unchecked(
                        model_id, frame.modalities[model.input_modality])
                    unchecked.append((model_id, value, ms, (time.perf_counter() - start) * 1e3))
                    continue
                output, ms = self.run(model_id, frame)
            except ModelFailure as failure:
                outcomes[model_id] = failure
                continue
            outcomes[model_id] = Ran(output, ms, (time.perf_counter() - start) * 1e3)
        for model_id, value, ms, elapsed_ms in unchecked:
            try:
                outcomes[model_id] = Ran(self._accept(model_id, value, ms), ms, elapsed_ms)
            except ModelFailure as failure:
                outcomes[model_id] = failure

    # -- failures and back-off ---------------------------------------------------------------
    def fail(self, model_id: str, failure: ModelFailure) -> Health:
        """Exclude a model until its back-off ends; a hung one is replaced by a fresh adapter
        (the abandoned call keeps the old one)."""
        health = self.health_of(model_id)
        health.failures += 1
        health.total_failures += 1
        health.last_error, health.last_kind = str(failure), failure.kind
        backoff = min(self.backoff.retry_max_s,
                      self.backoff.retry_after_s * 2 ** (health.failures - 1))
        health.backoff_s = backoff
        health.retry_at = time.monotonic() + backoff
        if failure.kind == "timeout":
            self.models[model_id] = self.make(self.models[model_id].config)
        else:
            try:
                self.models[model_id].unload()
            except Exception:
                log.exception("model %s: unload after a failure failed", model_id)
                self.models[model_id] = self.make(self.models[model_id].config)
        log.warning("model %s failed (%s): %s; excluded, retry in %.1f s%s", model_id,
                    failure.kind, failure, backoff,
                    " once its hung call has returned" if self.waiting(model_id) else "")
        return health

    def retry_due(self, frame: Frame) -> tuple[dict[str, np.ndarray], list[ModelFailure]]:
        """Run, on this frame, the models whose back-off has ended: those back (with their
        output) and the failures of those that failed again (already excluded again)."""
        back: dict[str, np.ndarray] = {}
        failures: list[ModelFailure] = []
        now = time.monotonic()
        for model_id in list(self.models):
            health = self.health_of(model_id)
            if health.retry_at is None or now < health.retry_at:
                continue
            if self.waiting(model_id):  # retried on the frame after the hung call returns
                if not health.waiting_logged:
                    health.waiting_logged = True
                    log.warning("model %s: back-off over, waiting for its hung call to return "
                                "before retrying", model_id)
                continue
            self.abandoned.pop(model_id, None)
            health.waiting_logged = False
            try:
                output, _ = self.run(model_id, frame)
            except ModelFailure as failure:
                self.fail(model_id, failure)
                failures.append(failure)
                continue
            log.info("model %s is back after %d failure(s)", model_id, health.failures)
            health.failures, health.retry_at = 0, None
            back[model_id] = output
        return back, failures

    def waiting(self, model_id: str) -> bool:
        """Whether the model's abandoned (hung) call is still running: it is not retried
        meanwhile, on the old adapter nor a fresh one, so a model that hangs holds at most
        one thread however often it would be retried."""
        abandoned = self.abandoned.get(model_id)
        return abandoned is not None and abandoned.busy

    def status(self, active: Iterable[str]) -> dict[str, dict[str, object]]:
        """Each model's state for the status: failed, active or predicted."""
        now = time.monotonic()
        activated = set(active)
        report: dict[str, dict[str, object]] = {}
        for model_id in self.models:
            health = self.health_of(model_id)
            report[model_id] = {
                "state": ("failed" if health.failed else "active" if model_id in activated
                          else "predicted"),
                "loaded": self.models[model_id].loaded,
                "failures": health.total_failures,
                "last_error": health.last_error,
                "retry_in_s": None if health.retry_at is None
                else round(max(0.0, health.retry_at - now), 3),
                "waiting_for_hung_call": health.failed and self.waiting(model_id),
            }
        return report
