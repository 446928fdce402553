"""The agent loop: measure costs, select the activated models, then per frame run them and
predict the others through the link ensembles, publishing every model's output.

Failures: a model that raises, outlives its `timeout_ms`, or returns NaN or the wrong shape is
marked failed, excluded from selection (`Problem.unavailable`), predicted from the others
from the same frame on, and measured again after a back-off (`[selection] retry_after_s`,
doubling up to `retry_max_s`). Nothing a model does stops the loop. Models with a timeout
run on a `Runner` thread, a frame's calls in one handoff (`_run_models`), and where they all
succeed the frame's payloads are made there too (`agent.runner` says why).

Re-profiling: every `[profiling] period_frames` frames or `period_s` seconds, or on
`reprofile()`, the next `sample_frames` frames run every available model (the non-activated
ones are loaded for the window, and their memory and delay measured), run every link, and
score the ensemble of each source subset against the exact outputs (`agent.profiling`). At
the end of the window the online figures replace the bundle's where they rest on enough
frames, the selection is re-made from the fresh costs and figures, and the models that are
not activated are unloaded. The window's extra work is timed and reported as its cost.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import numpy as np

from agent.config import AgentConfig, ConfigError
from agent.costs import (
    Cost,
    CostStats,
    make_probe,
    memory_delta_mb,
    rss_bytes,
    warm_up_runtime,
)
from agent.heap import configure_heap
from agent.models import (
    ModelAdapter,
    ModelFailure,
    check_output,
    make_model,
)
from agent.profiling import OnlineAgreement, subsets_to_score
from agent.publisher import Publisher
from agent.runner import Runner
from agent.selection import Problem, Selection, SelectionError, get_policy
from agent.sources import Frame, Source, open_sources
from links_tflite.bundle import Bundle, LinkEntry, Profile, link_name, load_bundle
from links_tflite.ensemble import EnsemblePredictor, LinkRunner, open_link
from links_tflite.tasks import decode

log = logging.getLogger(__name__)

STATUS_EVERY_S = 5.0
T = TypeVar("T")


@dataclass
class Counters:
    frames: int = 0
    executed: int = 0
    predicted: int = 0
    model_errors: int = 0
    timeouts: int = 0
    frame_errors: int = 0
    reselections: int = 0
    started: float = field(default_factory=time.monotonic)

    def fps(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.frames / elapsed if elapsed > 0 else 0.0


@dataclass
class Overhead:
    """The agent's own time, measured on the box: the loop's wall time (processing frames and
    publishing their outputs) less the executed models' inference. The target is under 5%
    of the models' time; this is how a box shows whether it holds there."""

    frames: int = 0
    loop_ms: float = 0.0  # in `process`
    models_ms: float = 0.0  # the executed models' inference, inside loop_ms
    publish_ms: float = 0.0  # handing the outputs to the publisher (`run`)

    def to_dict(self) -> dict[str, float | int | None]:
        n = max(self.frames, 1)
        agent_ms = self.loop_ms + self.publish_ms - self.models_ms
        return {
            "frames": self.frames,
            "models_ms_per_frame": round(self.models_ms / n, 4),
            "agent_ms_per_frame": round(agent_ms / n, 4),
            "share_of_models": round(agent_ms / self.models_ms, 4) if self.models_ms else None,
        }


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

    @property
    def failed(self) -> bool:
        return self.retry_at is not None


@dataclass
class ProfilingStats:
    windows: int = 0
    frames: int = 0
    cost_ms: float = 0.0  # the windows' extra work, all windows
    last_window_cost_ms: float = 0.0
    last_window_extra_memory_mb: float = 0.0
    last_end: float | None = None  # monotonic


def check_models_in_bundle(config: AgentConfig, bundle: Bundle) -> None:
    """Every configured model is one the bundle links, with the task the bundle expects."""
    errors = []
    for i, model in enumerate(config.models):
        if model.id not in bundle.models:
            errors.append((f"models.{i}.id", f"model {model.id!r} is not in the bundle at "
                           f"{bundle.root} (it has {', '.join(sorted(bundle.models))})"))
        elif model.task is not None and model.task.spec() != bundle.models[model.id]:
            errors.append((f"models.{i}.task", f"differs from the bundle's task for {model.id!r}"
                           f": {bundle.models[model.id].to_dict()}"))
    if errors:
        raise ConfigError(errors)


def measure_link(bundle: Bundle, link: LinkEntry, example: np.ndarray, stats: CostStats,
                 runs: int) -> None:
    """A link's memory and delay, measured by loading it alone and running it (a sequence
    link: its encoder, decoder step and the host's greedy decoding loop)."""
    loaded: list[LinkRunner] = []

    def load() -> None:
        loaded.append(open_link(bundle, link))
        loaded[0].run_one(example)

    stats.begin_load()
    stats.record_memory(memory_delta_mb(load))
    for _ in range(stats.warmup + runs):
        start = time.perf_counter()
        loaded[0].run_one(example)
        stats.add_delay((time.perf_counter() - start) * 1e3)


class Agent:
    def __init__(self, config: AgentConfig, publisher: Publisher | None = None) -> None:
        self.config = config
        self.bundle = load_bundle(config.bundle.path)
        check_models_in_bundle(config, self.bundle)
        self.models: dict[str, ModelAdapter] = {m.id: make_model(m) for m in config.enabled_models}
        self.source: Source = open_sources(config)
        self.cameras = self.source.cameras
        missing = {m.input_modality for m in self.models.values()} - set(self.source.modalities)
        if missing:
            raise ConfigError([("models", f"inputs {sorted(missing)} not offered by the source "
                                          f"(it has {list(self.source.modalities)})")])
        self.ensembles = EnsemblePredictor(self.bundle)
        self.publisher = publisher
        self.counters = Counters()
        prof = config.profiling
        self.probe = make_probe(prof.memory_probe)
        if not configure_heap():
            log.info("not glibc: an unloaded model's memory may stay in the process heap")
        self.stats: dict[str, CostStats] = {}  # model id, or link name "src->dst"
        self.health: dict[str, Health] = {m: Health() for m in self.models}
        self.runner: Runner | None = None  # model calls with a timeout run there
        self.abandoned: dict[str, Runner] = {}  # model id -> the runner left in its hung call
        self.online = OnlineAgreement(prof.agreement_window, prof.min_samples)
        self.profile: Profile = self.bundle.profile  # the bundle's, then online where measured
        self.profiling = ProfilingStats()
        self.selection: Selection | None = None
        self.stop_event = threading.Event()
        self._seq = itertools.count(1)
        self._lock = threading.RLock()
        self._reprofile = threading.Event()
        self._reselect = threading.Event()
        self._window_left = 0
        # vector targets only: online scoring pools activated outputs, not token sequences
        self._window_links: dict[str, LinkRunner] = {}
        self._frames_since_profile = 0
        self.overhead = Overhead()
        log.info("memory probe: %s", self.probe.name)

    # -- costs -----------------------------------------------------------------------------
    def _stats(self, key: str) -> CostStats:
        if key not in self.stats:
            prof = self.config.profiling
            self.stats[key] = CostStats(alpha=prof.ema_alpha, window=prof.delay_window,
                                        warmup=prof.warmup_runs)
        return self.stats[key]

    @property
    def model_costs(self) -> dict[str, Cost]:
        return {m: self.stats[m].cost() if m in self.stats else Cost(None, None)
                for m in self.models}

    @model_costs.setter
    def model_costs(self, costs: dict[str, Cost]) -> None:
        """Replace the models' figures (e.g. `{}` to forget them before measuring again)."""
        self._set_costs({m: c for m, c in costs.items()}, is_link=False)

    @property
    def link_costs(self) -> dict[tuple[str, str], Cost]:
        return {(link.source, link.target): self.stats[link.name].cost()
                for link in self.bundle.links if link.name in self.stats
                and link.source in self.models and link.target in self.models}

    @link_costs.setter
    def link_costs(self, costs: dict[tuple[str, str], Cost]) -> None:
        self._set_costs({link_name(s, t): c for (s, t), c in costs.items()}, is_link=True)

    def _set_costs(self, costs: dict[str, Cost], is_link: bool) -> None:
        for key in [k for k in self.stats if ("->" in k) == is_link and k not in costs]:
            del self.stats[key]
        for key, cost in costs.items():
            stats = self._stats(key)
            stats.memory_mb, stats.delay_ema_ms = cost.memory_mb, cost.delay_ms

    def _health(self, model_id: str) -> Health:
        """A model's failure state; models enabled later (remote config) start healthy."""
        return self.health.setdefault(model_id, Health())

    # -- guarded model calls ---------------------------------------------------------------
    def _runner(self) -> Runner:
        """The runner for model calls: a fresh one after the last was abandoned."""
        if self.runner is None or self.runner.hung:
            self.runner = Runner(self.config.device_id)
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
        """Keep the runner left in a hung call, by the model's id (see _retry_due)."""
        assert runner.hung_on is not None
        self.abandoned[runner.hung_on] = runner
        if self.runner is runner:
            self.runner = None

    def close(self) -> None:
        """End the runner's thread (an abandoned one ends when its hung call returns)."""
        if self.runner is not None:
            self.runner.stop()
            self.runner = None
        self.source.close()

    def _load(self, model_id: str) -> None:
        model = self.models[model_id]
        if not model.loaded:
            self._stats(model_id).begin_load()
            self._call(model_id, model.load, model.config.load_timeout_s)

    def _infer(self, model_id: str, example: np.ndarray) -> tuple[np.ndarray, float]:
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
        output = check_output(model_id, value, self.bundle.models[model_id].output_width)
        self._stats(model_id).add_delay(ms)
        return output

    def _run(self, model_id: str, frame: Frame) -> tuple[np.ndarray, float]:
        """Run one model on one frame, loading it first where needed (its memory measured)."""
        example = frame.modalities[self.models[model_id].input_modality]
        if self.models[model_id].loaded:
            return self._infer(model_id, example)
        result: list[tuple[np.ndarray, float]] = []
        memory = memory_delta_mb(
            lambda: (self._load(model_id), result.append(self._infer(model_id, example))),
            self.probe)
        self._stats(model_id).record_memory(memory)
        return result[0]

    def _run_models(self, frame: Frame, model_ids: list[str],
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
                output, ms = self._run(model_id, frame)
            except ModelFailure as failure:
                outcomes[model_id] = failure
                continue
            outcomes[model_id] = Ran(output, ms, (time.perf_counter() - start) * 1e3)
        for model_id, value, ms, elapsed_ms in unchecked:
            try:
                outcomes[model_id] = Ran(self._accept(model_id, value, ms), ms, elapsed_ms)
            except ModelFailure as failure:
                outcomes[model_id] = failure

    def _fail(self, model_id: str, failure: ModelFailure) -> None:
        """Exclude a model until its back-off ends; a hung one is replaced by a fresh adapter
        (the abandoned call keeps the old one)."""
        health = self._health(model_id)
        health.failures += 1
        health.total_failures += 1
        health.last_error, health.last_kind = str(failure), failure.kind
        sel = self.config.selection
        backoff = min(sel.retry_max_s, sel.retry_after_s * 2 ** (health.failures - 1))
        health.backoff_s = backoff
        health.retry_at = time.monotonic() + backoff
        self.counters.model_errors += 1
        if failure.kind == "timeout":
            self.counters.timeouts += 1
            self.models[model_id] = make_model(self.models[model_id].config)
        else:
            try:
                self.models[model_id].unload()
            except Exception:
                log.exception("model %s: unload after a failure failed", model_id)
                self.models[model_id] = make_model(self.models[model_id].config)
        log.warning("model %s failed (%s): %s; excluded, retry in %.1f s", model_id,
                    failure.kind, failure, backoff)

    def _retry_due(self, frame: Frame) -> bool:
        """Measure the models whose back-off has ended on this frame; True if one is back."""
        back = False
        now = time.monotonic()
        for model_id in list(self.models):
            health = self._health(model_id)
            if health.retry_at is None or now < health.retry_at:
                continue
            abandoned = self.abandoned.get(model_id)
            if abandoned is not None and abandoned.busy:  # the hung call has not returned yet
                health.retry_at = now + self.config.selection.retry_after_s
                continue
            try:
                output, _ = self._run(model_id, frame)
            except ModelFailure as failure:
                self._fail(model_id, failure)
                continue
            log.info("model %s is back after %d failure(s)", model_id, health.failures)
            health.failures, health.retry_at = 0, None
            self._measure_links(model_id, output)
            back = True
        return back

    # -- measuring -------------------------------------------------------------------------
    def measure(self, frame: Frame) -> None:
        """Measure every enabled model and every usable link on this box, on a real frame.
        A model that fails here is marked failed, as in the loop."""
        runs = self.config.profiling.delay_runs
        runtime_warmup = self._initialise_runtime()
        for model_id in self.models:
            example = frame.modalities[self.models[model_id].input_modality]
            try:
                output, _ = self._run(model_id, frame)
                for _ in range(self.config.profiling.warmup_runs + runs - 1):
                    self._infer(model_id, example)
            except ModelFailure as failure:
                self._fail(model_id, failure)
                continue
            self._measure_links(model_id, output)
        del runtime_warmup
        log.info("model costs: %s", {k: v.to_dict() for k, v in self.model_costs.items()})

    def _measure_links(self, source: str, output: np.ndarray) -> None:
        for link in self.bundle.links:
            if link.source == source and link.target in self.models:
                measure_link(self.bundle, link, output, self._stats(link.name),
                             self.config.profiling.delay_runs)

    def _initialise_runtime(self) -> object | None:
        """Warm the runtime up on the smallest single-file link (see warm_up_runtime)."""
        return warm_up_runtime(
            [self.bundle.path_of(link) for link in self.bundle.links if not link.decoder])

    # -- selecting -------------------------------------------------------------------------
    def problem(self, budget: dict[str, float] | None = None) -> Problem:
        if budget is None:
            budget = {r: v for r, v in self.config.budget.model_dump().items() if v is not None}
        return Problem(
            models=tuple(self.models),
            model_costs=self.model_costs,
            link_costs=self.link_costs,
            profile=self.profile,
            budget=budget,
            unavailable=frozenset(m for m in self.models if self._health(m).failed),
            ensembles={t: self.ensembles.rule(t) for t in self.models},
        )

    def select(self, policy: str | None = None) -> Selection:
        selection = get_policy(policy or self.config.selection.policy).select(self.problem())
        log.info("selected %s: active %s, predicted %s, use %s, expected agreement %.3f",
                 selection.policy, sorted(selection.active), list(selection.predicted),
                 selection.use, selection.expected_agreement)
        return selection

    def apply(self, selection: Selection) -> None:
        """Load the activated models and the links they feed; unload everything else. A model
        that fails to load is marked failed and a new selection is asked for."""
        for model_id, model in self.models.items():
            if model_id not in selection.active:
                model.unload()
        for model_id in sorted(selection.active):
            try:
                self._load(model_id)
            except ModelFailure as failure:
                self._fail(model_id, failure)
                self._reselect.set()
        targets = selection.predicted if selection.uses_links else ()
        self.ensembles.prepare(selection.active, targets)
        self.selection = selection

    def reselect(self) -> Selection:
        """Select again from the current costs, profile and failures, and apply the choice.
        Thread-safe; where nothing fits, every model is predicted-or-missing until it does."""
        return self._reselect_now()

    def _reselect_now(self) -> Selection:
        """What the loop itself calls (failures, profiling windows): never raises for a
        selection that is impossible, whatever a subclass makes of `reselect()`."""
        with self._lock:
            try:
                selection = self.select()
            except SelectionError as exc:
                log.error("no selection possible: %s", exc)
                selection = Selection(self.config.selection.policy, frozenset(),
                                      tuple(self.models), {}, 0.0, True)
            self.counters.reselections += 1
            self.apply(selection)
            return selection

    def request_reselect(self) -> None:
        """Re-select before the next frame (safe from any thread)."""
        self._reselect.set()

    def request_reprofile(self) -> None:
        """Start a profiling window at the next frame (safe from any thread): every model and
        link runs for `sample_frames` frames, then the selection is re-made."""
        self._reprofile.set()

    def reprofile(self) -> None:
        """Re-profile on the live stream: a profiling window from the next frame."""
        self.request_reprofile()

    # -- profiling windows -----------------------------------------------------------------
    def _window_due(self) -> bool:
        if self._window_left > 0:
            return False
        if self._reprofile.is_set():
            self._reprofile.clear()
            return True
        prof = self.config.profiling
        if prof.period_frames and self._frames_since_profile >= prof.period_frames:
            return True
        last = self.profiling.last_end or self.counters.started
        return bool(prof.period_s) and time.monotonic() - last >= prof.period_s

    def _begin_window(self) -> None:
        self._window_left = self.config.profiling.sample_frames
        self.profiling.last_window_cost_ms = 0.0
        self._window_links = {
            link.name: open_link(self.bundle, link)
            for link in self.bundle.links
            if link.source in self.models and link.target in self.models
            and self.bundle.models[link.target].kind != "sequence"
        }
        log.info("profiling window: %d frames, every model runs", self._window_left)

    def _end_window(self) -> None:
        self._window_links = {}
        self.profile = self.online.profile(self.bundle.profile)
        self.profiling.windows += 1
        self.profiling.last_end = time.monotonic()
        self._frames_since_profile = 0
        assert self.selection is not None
        self.profiling.last_window_extra_memory_mb = sum(
            self.model_costs[m].get("memory_mb") for m in self.models
            if m not in self.selection.active)
        self._reselect_now()  # unloads what is not activated
        log.info("profiling window done: %s", self.online.summary())

    def _score_links(self, outputs: dict[str, np.ndarray]) -> None:
        """Run every link between models that ran, and score every subset's ensemble."""
        assert self.selection is not None
        prof = self.config.profiling
        for target, exact in outputs.items():
            spec = self.bundle.models[target]
            link_outputs: dict[str, np.ndarray] = {}
            for link in self.bundle.links_into(target):
                runner = self._window_links.get(link.name)
                if runner is None or link.source not in outputs:
                    continue
                start = time.perf_counter()
                link_outputs[link.source] = runner.run_one(outputs[link.source])
                self._stats(link.name).add_delay((time.perf_counter() - start) * 1e3)
            if not link_outputs:
                continue
            subsets = subsets_to_score(sorted(link_outputs), self.selection.active,
                                       prof.online_subsets_max_sources)
            self.online.score_frame(spec, target, exact, link_outputs,
                                    self.ensembles.rule(target), subsets)

    # -- per frame -------------------------------------------------------------------------
    def _payload(self, frame: Frame, model_id: str, value: np.ndarray, provenance: str,
                 sources: list[str], est_agreement: float, latency_ms: float) -> dict[str, object]:
        numbers = np.asarray(value, dtype=np.float64).reshape(-1).tolist()
        return {
            "frame_id": frame.frame_id,
            "camera": self.cameras[frame.camera],
            "ts": frame.ts,
            "stream_ts": frame.stream_ts,
            "model": model_id,
            "value": numbers,
            "decoded": decode(self.bundle.models[model_id], numbers),
            "provenance": provenance,
            "sources": sources,
            "est_agreement": est_agreement,
            "latency_ms": latency_ms,
            "seq": next(self._seq),
        }

    def _payloads(self, frame: Frame, executed: dict[str, Ran]) -> list[dict[str, object]]:
        """Every model's output on the frame: the executed ones, then the predicted."""
        assert self.selection is not None
        payloads = [
            self._payload(frame, m, r.output, "executed", [m], 1.0, r.latency_ms)
            for m, r in sorted(executed.items())
        ]
        if not self.selection.uses_links:
            return payloads
        sources = {m: executed[m].output for m in self.selection.active if m in executed}
        for target in self.selection.predicted:
            if target in executed or not sources:
                continue
            start = time.perf_counter()
            try:
                prediction = self.ensembles.predict(target, sources, self.profile)
            except LookupError as exc:
                log.debug("frame %s: %s", frame.frame_id, exc)
                continue
            latency = (time.perf_counter() - start) * 1e3
            payloads.append(self._payload(frame, target, prediction.value, "predicted",
                                          list(prediction.sources), prediction.est_agreement,
                                          latency))
        return payloads

    def process(self, frame: Frame) -> list[dict[str, object]]:
        """One frame: every model's output, executed or predicted."""
        with self._lock:
            started = time.perf_counter()
            try:
                payloads = self._process(frame)
            finally:
                self.overhead.loop_ms += (time.perf_counter() - started) * 1e3
                self.overhead.frames += 1
            executed = [p["latency_ms"] for p in payloads if p["provenance"] == "executed"]
            self.overhead.models_ms += float(sum(executed))  # type: ignore[arg-type]
            return payloads

    def _process(self, frame: Frame) -> list[dict[str, object]]:
        changed = self._retry_due(frame)
        if self._reselect.is_set():
            self._reselect.clear()
            changed = True
        if changed:
            self._reselect_now()
        if self._window_due():
            self._begin_window()
        profiling = self._window_left > 0
        assert self.selection is not None

        executed: dict[str, Ran] = {}
        tried: set[str] = set()
        extra_ms = 0.0
        # Outside a window the payloads are made where the models ran, in the same handoff
        # (the caches the models left are the ones the rest reads), unless one fails.
        then = None if profiling else partial(self._payloads, frame)
        payloads: list[dict[str, object]] | None = None
        while True:
            active = self.selection.active
            to_run = [m for m in sorted(active) if m not in tried]
            if profiling:
                to_run += [m for m in self.models if m not in tried and m not in active
                           and not self._health(m).failed]
            if not to_run:
                break
            active_failed = False
            tried.update(to_run)
            outcomes, payloads = self._run_models(frame, to_run, then)
            then = None
            for model_id, outcome in outcomes.items():
                if isinstance(outcome, ModelFailure):
                    self._fail(model_id, outcome)
                    active_failed |= model_id in active
                    continue
                executed[model_id] = outcome
                if model_id not in active:
                    extra_ms += outcome.elapsed_ms
            if not active_failed:
                break
            self._reselect_now()  # the failed model is predicted; newly activated ones run now

        if payloads is None:
            if profiling:
                start = time.perf_counter()
                self._score_links({m: r.output for m, r in executed.items()})
                extra_ms += (time.perf_counter() - start) * 1e3
            payloads = self._payloads(frame, executed)
        self.counters.executed += sum(p["provenance"] == "executed" for p in payloads)
        self.counters.predicted += sum(p["provenance"] == "predicted" for p in payloads)

        self._frames_since_profile += 1
        if profiling:
            self.profiling.frames += 1
            self.profiling.cost_ms += extra_ms
            self.profiling.last_window_cost_ms += extra_ms
            self._window_left -= 1
            if self._window_left == 0:
                self._end_window()
        return payloads

    # -- reporting -------------------------------------------------------------------------
    def status(self, state: str) -> dict[str, object]:
        """The retained status; safe from any thread (waits for the frame in progress)."""
        with self._lock:
            return self._status_payload(state)

    def _status_payload(self, state: str) -> dict[str, object]:
        rss = rss_bytes()
        now = time.monotonic()
        prof = self.config.profiling
        last = self.profiling.last_end
        return {
            "state": state,
            "selection": self.selection.to_dict() if self.selection else None,
            "budget": self.problem().budget,
            "costs": {
                "models": {m: self._stats(m).to_dict() for m in self.models},
                "links": {link_name(s, t): self._stats(link_name(s, t)).to_dict()
                          for (s, t) in self.link_costs},
                "probe": self.probe.name,
                "probe_details": self.probe.details(),
            },
            "models": {
                m: {
                    "state": ("failed" if h.failed else "active"
                              if self.selection and m in self.selection.active else "predicted"),
                    "loaded": self.models[m].loaded,
                    "failures": h.total_failures,
                    "last_error": h.last_error,
                    "retry_in_s": None if h.retry_at is None else round(max(0.0,
                                                                             h.retry_at - now), 3),
                }
                for m, h in ((m, self._health(m)) for m in self.models)
            },
            "profiling": {
                "period_frames": prof.period_frames,
                "period_s": prof.period_s,
                "sample_frames": prof.sample_frames,
                "windows": self.profiling.windows,
                "in_window": self._window_left > 0,
                "age_s": None if last is None else round(now - last, 3),
                "cost_ms": round(self.profiling.cost_ms, 3),
                "last_window_cost_ms": round(self.profiling.last_window_cost_ms, 3),
                "last_window_extra_memory_mb": round(
                    self.profiling.last_window_extra_memory_mb, 3),
                "share_of_loop_time": round(self.profiling.cost_ms / self.overhead.loop_ms, 6)
                if self.overhead.loop_ms else 0.0,
                "online": self.online.summary(),
            },
            "frames": self.counters.frames,
            "fps": round(self.counters.fps(), 3),
            "rss_mb": None if rss is None else round(rss / (1024 * 1024), 3),
            "overhead": self.overhead.to_dict(),
            "counters": {
                "executed": self.counters.executed,
                "predicted": self.counters.predicted,
                "model_errors": self.counters.model_errors,
                "timeouts": self.counters.timeouts,
                "frame_errors": self.counters.frame_errors,
                "reselections": self.counters.reselections,
                "published": self.publisher.published if self.publisher else 0,
            },
            "outbox_depth": self.publisher.pending if self.publisher else 0,
            "sources": self.source.stats(),
        }

    def publish_status(self, state: str) -> None:
        if self.publisher:
            self.publisher.publish(self.publisher.topics.status, self.status(state), qos=1,
                                   retain=True)

    # -- the loop --------------------------------------------------------------------------
    def start(self) -> Iterator[Frame]:
        """Measure and select on the first frame; return the stream including that frame."""
        frames = self.source.frames()
        first = next(frames, None)
        if first is None:
            raise RuntimeError(f"source {self.config.source_type!r} yielded no frame")
        self.measure(first)
        self.apply(self.select())
        return itertools.chain([first], frames)

    def run(self, max_frames: int | None = None) -> Counters:
        frames = self.start()
        limit = max_frames or self.config.max_frames
        self.counters.started = time.monotonic()  # fps over the loop; measuring's errors kept
        self.publish_status("running")
        last_status = time.monotonic()
        for frame in frames:
            if self.stop_event.is_set():
                break
            try:
                payloads = self.process(frame)
            except Exception:  # the loop never stops for one frame
                self.counters.frame_errors += 1
                log.exception("frame %s failed", frame.frame_id)
                payloads = []
            started = time.perf_counter()
            for payload in payloads:
                if self.publisher:
                    self.publisher.publish(self.publisher.topics.output(str(payload["model"])),
                                           payload)
            self.overhead.publish_ms += (time.perf_counter() - started) * 1e3
            self.counters.frames += 1
            if time.monotonic() - last_status > STATUS_EVERY_S:
                self.publish_status("running")
                last_status = time.monotonic()
            if limit is not None and self.counters.frames >= limit:
                break
        self.publish_status("stopped")
        return self.counters
