"""The agent loop: measure costs, select the activated models, then per frame run them and
predict the others through the link ensembles, publishing every model's output.

`Agent` is made of parts it is given (`Agent.from_config` builds them from a config):

- the model executor (agent.executor): the models, the watchdog their calls run under,
  each model's health and back-off. A failing model is excluded (`Problem.unavailable`),
  predicted from the others from the same frame on, and measured again after its back-off.
  Nothing a model does stops the loop.
- the cost book (agent.costbook): model costs by id, link costs by (source, target).
- the profiling window (agent.window): every `[profiling] period_frames` frames or
  `period_s` seconds, or on `reprofile()`, the next `sample_frames` frames run every
  available model and link and score the ensembles online; at its end the online figures
  replace the bundle's where they rest on enough frames, the selection is re-made, and the
  models not activated are unloaded. Given a window store and a drift watch
  (`keep_windows`, agent.windowstore, agent.uploads), the window's frames are kept for
  relinking and the live agreement of what was predicted is checked against the bundle's.
- the outputs (agent.output): each frame's `Output`s, filtered by the per-model publishing
  rules (agent.publishrules), then turned into the published messages once, where the
  `[publish]` settings apply.
- the source (agent.sources): `[source]`, or the `[[sources]]` read together; each frame
  names its camera, and every output carries the camera's name and the stream's timestamp;
  what the source counts (dropped frames, reconnections, malformed records) is the status's
  `sources` section. The agent closes it on `close()`.
- the status builder (agent.status).
- the timetable (agent.timetable): under a policy that plans (`plan`), which `run/p` models
  run on a frame (staggered per camera), and each model's last exact output per camera,
  served as `reused` with its age between its runs. The other actions: `predict` through the
  links of the models run every frame (only the links it reads are loaded), `prior`, `none`.

Where every model with a timeout runs on the runner thread, a frame's calls and its
predictions are made in one handoff (agent.runner says why).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from functools import partial

import numpy as np

from agent.adapters.python import warm_up
from agent.config import AgentConfig, ConfigError
from agent.costbook import CostBook, Pair
from agent.costs import Cost, CostStats, make_probe, memory_delta_mb, warm_up_runtime
from agent.executor import ModelExecutor, Ran
from agent.gate import Gate
from agent.heap import configure_heap
from agent.models import ModelAdapter, ModelFailure, make_model
from agent.output import FrameMessage, Output, Payloads
from agent.planning import PREDICT, PRIOR, RUN, Action
from agent.publishrules import PublishRules
from agent.selection import Problem, Selection, SelectionError, get_policy
from agent.sources import Frame, Source, open_sources
from agent.state import AgentState
from agent.status import CostsReport, Counters, Overhead, Sections, StatusBuilder
from agent.timetable import Timetable
from agent.transport import Publisher
from agent.uploads import DriftWatch
from agent.window import ProfilingWindow
from agent.windowstore import WindowStore
from links_tflite.bundle import Bundle, LinkEntry, Profile, load_bundle
from links_tflite.ensemble import EnsemblePredictor, LinkRunner, open_link
from links_tflite.prior import prior_outputs

log = logging.getLogger(__name__)

OWN_FRAMES = 200  # frames the agent's own time per frame is the median of

__all__ = ["Agent", "Counters", "Overhead", "check_models_in_bundle", "measure_link"]


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
    def __init__(self, config: AgentConfig, bundle: Bundle, source: Source,
                 executor: ModelExecutor, costs: CostBook, window: ProfilingWindow,
                 ensembles: EnsemblePredictor, publisher: Publisher | None = None,
                 payloads: Payloads | None = None, status_builder: StatusBuilder | None = None,
                 publish_rules: PublishRules | None = None,
                 timetable: Timetable | None = None, gate: Gate | None = None,
                 drift: DriftWatch | None = None) -> None:
        self.config = config
        self.bundle = bundle
        self.source = source
        self.executor = executor
        self.costs = costs
        self.window = window
        self.ensembles = ensembles
        self.publisher = publisher
        self.payloads = payloads or Payloads(source.cameras,
                                             publisher.next_seq if publisher else 1)
        self.publish_rules = publish_rules or PublishRules(config.publish)
        self.status_builder = status_builder or StatusBuilder()
        self.timetable = timetable or Timetable()
        self.gate = gate or Gate()
        self.drift = drift  # `[fleet] drift_margin`: checked at each window's end
        # the agent's own time on each of the last frames outside windows (agent_ms)
        self.own_ms: deque[float] = deque(maxlen=OWN_FRAMES)
        self.reserved_ms = 0.0  # of a delay budget, for the agent's own work (plans only)
        self.counters = Counters()
        self.overhead = Overhead()
        self.selection: Selection | None = None
        self.config_version = 0  # the remotely set config's version (agent.control)
        self.measured_at: float | None = None  # monotonic: the last measure()
        self.warm_up_mb: float | None = 0.0  # what the config's `warm_up` calls allocated
        self.last_frame: Frame | None = None
        self.stop_event = threading.Event()
        # One lock: a frame, the status and every control action (agent.service) take it.
        self.lock = threading.RLock()
        self._reselect = threading.Event()
        log.info("memory probe: %s", executor.probe.name)

    @classmethod
    def from_config(cls, config: AgentConfig, publisher: Publisher | None = None) -> Agent:
        """The agent and its parts, built from a validated config."""
        bundle = load_bundle(config.bundle.path)
        check_models_in_bundle(config, bundle)
        models: dict[str, ModelAdapter] = {m.id: make_model(m) for m in config.enabled_models}
        source = open_sources(config, publisher)
        missing = {m.input_modality for m in models.values()} - set(source.modalities)
        if missing:
            source.close()  # a live source's reader thread, a device
            raise ConfigError([("models", f"inputs {sorted(missing)} not offered by the source "
                                          f"(it has {list(source.modalities)})")])
        probe = make_probe(config.profiling.memory_probe)
        if not configure_heap():
            log.info("not glibc: an unloaded model's memory may stay in the process heap")
        costs = CostBook(config.profiling)
        executor = ModelExecutor(models, output_widths(bundle), costs, probe, config.selection,
                                 runner_name=config.device_id)
        window = ProfilingWindow(config.profiling, bundle.profile)
        return cls(config, bundle, source, executor, costs, window, EnsemblePredictor(bundle),
                   publisher)

    def keep_windows(self, store: WindowStore, drift: DriftWatch | None = None) -> None:
        """Keep the profiling windows' rows in `store` from the next window on, and check
        their agreement with `drift` at each window's end (agent.uploads)."""
        with self.lock:
            self.window.store = store
            self.drift = drift

    # -- views of the parts ----------------------------------------------------------------
    @property
    def models(self) -> dict[str, ModelAdapter]:
        return self.executor.models

    @property
    def model_costs(self) -> dict[str, Cost]:
        return self.costs.model_costs(self.models)

    @property
    def link_costs(self) -> dict[Pair, Cost]:
        return self.costs.link_costs(self._link_pairs())

    @property
    def profile(self) -> Profile:
        """The bundle's profile, with the online figures where the windows measured them."""
        return self.window.profile

    def _link_pairs(self) -> list[Pair]:
        """The bundle's links between enabled models, in the bundle's order."""
        return [(link.source, link.target) for link in self.bundle.links
                if link.source in self.models and link.target in self.models]

    def close(self) -> None:
        """End the runner's thread (an abandoned one ends when its hung call returns) and
        release the source (a live stream's reader thread, a device)."""
        self.executor.close()
        self.source.close()
        if self.window.store is not None:
            self.window.store.close()

    def _fail(self, model_id: str, failure: ModelFailure) -> None:
        self.executor.fail(model_id, failure)
        self._count_failure(failure)

    def _count_failure(self, failure: ModelFailure) -> None:
        self.counters.model_errors += 1
        if failure.kind == "timeout":
            self.counters.timeouts += 1

    # -- measuring -------------------------------------------------------------------------
    def measure(self, frame: Frame) -> None:
        """Measure every enabled model and every usable link on this box, on a real frame.
        A model that fails here is marked failed, as in the loop."""
        runs = self.config.profiling.delay_runs
        warmed, self.warm_up_mb = warm_up(self.config.warm_up, self.executor.probe)
        runtime_warmup = warm_up_runtime(  # on the smallest single-file link
            [self.bundle.path_of(link) for link in self.bundle.links if not link.decoder])
        for model_id in self.models:
            example = frame.modalities[self.models[model_id].input_modality]
            try:
                output, _ = self.executor.run(model_id, frame)
                self.timetable.record(model_id, frame.camera, output)
                for _ in range(self.config.profiling.warmup_runs + runs - 1):
                    self.executor.infer(model_id, example)
            except ModelFailure as failure:
                self._fail(model_id, failure)
                continue
            self._measure_links(model_id, output)
        del runtime_warmup, warmed
        self.measured_at = time.monotonic()
        log.info("model costs: %s", {k: v.to_dict() for k, v in self.model_costs.items()})

    def _measure_links(self, source: str, output: np.ndarray) -> None:
        for link in self.bundle.links:
            if link.source == source and link.target in self.models:
                measure_link(self.bundle, link, output, self.costs.link(link.source, link.target),
                             self.config.profiling.delay_runs)

    # -- selecting -------------------------------------------------------------------------
    def _budget(self) -> dict[str, float]:
        return {r: v for r, v in self.config.budget.model_dump().items() if v is not None}

    def reuse_curves(self) -> dict[str, tuple[float, ...]]:
        """Each model's reuse curve: measured in the profiling windows, else the bundle's."""
        return {m: c for m, c in {**self.bundle.profile.reuse,
                                  **self.window.reuse.curves()}.items() if m in self.models}

    def problem(self, budget: dict[str, float] | None = None) -> Problem:
        return Problem(
            models=tuple(self.models),
            model_costs=self.model_costs,
            link_costs=self.link_costs,
            profile=self.profile,
            budget=self._budget() if budget is None else budget,
            unavailable=self.executor.unavailable(),
            ensembles={t: self.ensembles.rule(t) for t in self.models},
            priors={m: self.profile.priors[m] for m in self.models
                    if self._has_prior(m) and m in self.profile.priors},
            reuse=self.reuse_curves(),
        )

    def agent_ms(self) -> float:
        """The agent's own time per frame, measured outside the profiling windows: the loop
        less the models' inference and the predictions' links (charged as links), the median
        of the last `OWN_FRAMES` frames (a frame that re-plans or reloads is not typical),
        plus publishing; 0 before any frame."""
        published = self.overhead.publish_ms / self.overhead.frames if self.overhead.frames \
            else 0.0
        own = statistics.median(self.own_ms) if self.own_ms else 0.0
        return max(own, 0.0) + published

    def select(self, policy: str | None = None) -> Selection:
        chosen = get_policy(policy or self.config.selection.policy)
        problem = self.problem()
        self.reserved_ms = 0.0
        if chosen.plans and "delay_ms" in problem.budget:  # the agent's own work included
            self.reserved_ms = min(self.agent_ms(), problem.budget["delay_ms"])
            problem = dataclasses.replace(problem, budget={
                **problem.budget, "delay_ms": problem.budget["delay_ms"] - self.reserved_ms})
        selection = chosen.select(problem)
        log.info("selected %s: active %s, predicted %s, use %s, expected agreement %.3f",
                 selection.policy, sorted(selection.active), list(selection.predicted),
                 selection.use, selection.expected_agreement)
        return selection

    def apply(self, selection: Selection) -> None:
        """Load the activated models (and a plan's `run/p` ones) and the links they feed;
        unload everything else. A model that fails to load is marked failed and a new
        selection is asked for."""
        gated = self._gate_models(selection)
        self.executor.unload_all(keep=selection.resident | set(gated))
        for model_id in sorted(selection.resident | set(gated)):
            try:
                self.executor.load(model_id)
            except ModelFailure as failure:
                self._fail(model_id, failure)
                self._reselect.set()
        if selection.plan is not None:
            targets: tuple[str, ...] = selection.plan.with_kind(PREDICT)
        else:
            targets = selection.predicted if selection.uses_links else ()
        self.ensembles.prepare(selection.active, targets)
        self.timetable.set_plan(selection.plan,
                                {m: c.get("delay_ms") for m, c in self.model_costs.items()},
                                self.reuse_curves())
        spare = self._budget().get("delay_ms", 0.0) - selection.use.get("delay_ms", 0.0) \
            - self.reserved_ms
        self.gate.set({m: d for m, d in gated.items() if self.models[m].loaded}, spare)
        profiling = self.config.profiling
        if selection.plan is not None and not self.reuse_curves() and not \
                self.window.stats.windows and (profiling.period_frames or profiling.period_s):
            log.info("plan: no reuse curves in the bundle; a profiling window measures them "
                     "from the next frame")
            self.window.request()
        if self.selection is not None:  # every re-selection, whatever asked for it
            self.counters.reselections += 1
        self.selection = selection

    def _gate_models(self, selection: Selection) -> dict[str, float]:
        """The models the confidence gate may run, with their delays: under `[selection]
        gate` and a delay budget, a plan's predicted models, the least well predicted first,
        while their memory fits in what the plan leaves of a memory budget."""
        budget = self._budget()
        if selection.plan is None or not self.config.selection.gate or "delay_ms" not in budget:
            return {}
        costs = self.model_costs
        room = budget.get("memory_mb", float("inf")) - selection.use.get("memory_mb", 0.0)
        failed = self.executor.unavailable()
        chosen = {}
        targets = [m for m in selection.plan.with_kind(PREDICT) if m not in failed]
        for model in sorted(targets, key=lambda m: (self.profile.ensemble_agreement(
                m, selection.active), m)):
            if costs[model].get("memory_mb") <= room:
                room -= costs[model].get("memory_mb")
                chosen[model] = costs[model].get("delay_ms")
        return chosen

    def reselect(self) -> Selection:
        """Select again from the current costs, profile and failures, and apply the choice.
        Thread-safe; never raises for a selection that is impossible: then every model is
        predicted-or-missing until one fits."""
        with self.lock:
            try:
                selection = self.select()
            except SelectionError as exc:
                log.error("no selection possible: %s", exc)
                selection = Selection(self.config.selection.policy, frozenset(),
                                      tuple(self.models), {}, 0.0, True)
            self.apply(selection)
            return selection

    def request_reselect(self) -> None:
        """Re-select before the next frame (safe from any thread)."""
        self._reselect.set()

    def request_reprofile(self) -> None:
        """Start a profiling window at the next frame (safe from any thread): every model and
        link runs for `sample_frames` frames, then the selection is re-made."""
        self.window.request()

    def reprofile(self) -> None:
        """Re-profile on the live stream: a profiling window from the next frame."""
        self.request_reprofile()

    # -- state changes, each applied whole by the caller (agent.service) --------------------
    def state(self) -> AgentState:
        return AgentState(self.config, self.bundle, self.ensembles, dict(self.models),
                          self.costs.snapshot(), self.selection)

    def restore(self, state: AgentState) -> None:
        """Put a snapshot back: the config, bundle, models, costs and selection it held."""
        if state.bundle is not self.bundle:
            self.window.rebase(state.bundle.profile)
        self.config, self.bundle, self.ensembles = state.config, state.bundle, state.ensembles
        self.executor.models = dict(state.models)
        self.costs.restore(state.costs)
        self.selection = state.selection
        self._configure_parts()
        if self.selection is not None:
            self.apply(self.selection)

    def _configure_parts(self) -> None:
        """Hand the parts what they read of the config and the bundle in force."""
        self.executor.widths = output_widths(self.bundle)
        self.executor.backoff = self.config.selection
        self.costs.settings = self.config.profiling
        self.window.settings = self.config.profiling
        self.publish_rules.settings = self.config.publish

    def remeasure(self) -> None:
        """Measure from scratch on the last frame: unload first, so that loading is measured."""
        assert self.last_frame is not None
        self.executor.unload_all()
        self.costs.set_model_costs({})
        self.costs.set_link_costs({})
        self.measure(self.last_frame)

    def reconfigure(self, new: AgentConfig) -> None:
        """Apply a validated config: budget, policy, profiling, publish options, enabled
        models (a model enabled again is measured before selecting)."""
        enabled = {m.id: m for m in new.enabled_models}
        old_ids = set(self.models)
        models = {i: m for i, m in self.models.items() if i in enabled}
        for model_id in old_ids - set(enabled):
            self.models[model_id].unload()
        added = [i for i in enabled if i not in old_ids]
        for model_id in added:
            model = self.executor.make(enabled[model_id])
            if model.input_modality not in self.source.modalities:
                raise ConfigError([(f"models.{model_id}.input",
                                    f"{model.input_modality!r} is not offered by the source")])
            models[model_id] = model
        self.config = new
        self._configure_parts()
        self.executor.models = models
        self.costs.keep_only(models)
        self.timetable.forget(set(models))
        if added:
            self.remeasure()
        self.apply(self.select())

    def swap_bundle(self, bundle: Bundle) -> None:
        """Use a verified bundle: its links measured on this box, then a new selection."""
        check_models_in_bundle(self.config, bundle)
        self.bundle = bundle
        self.window.rebase(bundle.profile)  # its links and priors, not the last bundle's
        self.ensembles = EnsemblePredictor(bundle)
        self.config = self.config.model_copy(update={
            "bundle": self.config.bundle.model_copy(update={"path": bundle.root})})
        self._configure_parts()
        self.remeasure()
        self.apply(self.select())

    # -- per frame -------------------------------------------------------------------------
    def _frame_outputs(self, frame: Frame, executed: dict[str, Ran]) -> list[Output]:
        """Every model's output on the frame: the executed ones, then the predicted."""
        assert self.selection is not None
        outputs = [Output(m, r.output, "executed", (m,), 1.0, r.latency_ms)
                   for m, r in sorted(executed.items())]
        sources = {m: executed[m].output for m in self.selection.active if m in executed}
        plan = self.selection.plan
        for target in self.selection.predicted:
            if target in executed:
                continue
            if plan is not None:
                output = self._planned(frame, target, plan.actions.get(target), sources)
            else:
                output = self._predicted(frame, target, sources) if self.selection.uses_links \
                    else None
                output = output or self._prior(target)
            if output is not None:
                outputs.append(output)
        return outputs

    def _planned(self, frame: Frame, target: str, action: Action | None,
                 sources: dict[str, np.ndarray]) -> Output | None:
        """A model the plan does not run on this frame: `run/p` between its turns reuses its
        last exact output on the camera, with its age, where its reuse curve covers that age
        (else, counted as a fallback, its prior; a prediction where it has none and its
        links are loaded); `predict` and `prior` as planned; `none`: nothing."""
        kind = PREDICT if action is None else action.kind
        if kind == RUN:
            reused = self.timetable.reused(target, frame.camera)
            if reused is not None:
                return Output(target, reused.output, "reused", (target,), reused.agreement, 0.0,
                              age=reused.age)
            self.counters.reuse_fallbacks += 1
            return self._prior(target) or self._predicted(frame, target, sources, False)
        if kind == PREDICT:
            return self._predicted(frame, target, sources, False) or self._prior(target)
        if kind == PRIOR:
            return self._prior(target)
        return None

    def _predicted(self, frame: Frame, target: str, sources: dict[str, np.ndarray],
                   versus_prior: bool = True) -> Output | None:
        """The target predicted through its links from the present sources, unless (with
        `versus_prior`; a plan has made that choice already) its prior agrees at least as
        well as the ensemble of those sources (or no link reads them). Both figures are the
        agent's profile's: the bundle's, measured on the same held-out frames, until the
        profiling windows measure both on the same live frames."""
        if not sources:
            return None
        prior = self.profile.priors.get(target)
        if versus_prior and prior is not None and self._has_prior(target) and prior >= \
                self.profile.ensemble_agreement(target, frozenset(sources)):
            return None
        start = time.perf_counter()
        try:
            prediction = self.ensembles.predict(target, sources, self.profile)
        except LookupError as exc:
            log.debug("frame %s: %s", frame.frame_id, exc)
            return None
        latency = (time.perf_counter() - start) * 1e3
        return Output(target, prediction.value, "predicted", prediction.sources,
                      prediction.est_agreement, latency)

    def _gated(self, frame: Frame, outputs: list[Output]) -> list[Output]:
        """The confidence gate (agent.gate): the least confident predictions the spare delay
        affords are replaced by the model's own output (provenance `gated`)."""
        def run(model: str) -> tuple[np.ndarray, float] | None:
            try:
                return self.executor.infer(
                    model, frame.modalities[self.models[model].input_modality])
            except ModelFailure as failure:
                self._fail(model, failure)
                return None

        return self.gate.replace(outputs, self.bundle.models, run, self.executor.unavailable())

    def _calibrate(self, exact: dict[str, np.ndarray]) -> None:
        """In a profiling window: each gated model's prediction from the models run every
        frame, beside its exact output, for the gate's calibration."""
        assert self.selection is not None
        sources = {m: exact[m] for m in self.selection.active if m in exact}

        def predict(target: str) -> np.ndarray | None:
            try:
                return self.ensembles.predict(target, sources, self.profile).value if sources \
                    else None
            except LookupError:
                return None

        self.gate.calibrate(exact, self.bundle.models, predict)

    def _has_prior(self, target: str) -> bool:
        return target in self.bundle.priors or target in self.window.stream_priors

    def _prior(self, target: str) -> Output | None:
        """The target's constant predictor, free: the profiling windows' stream prior where
        it agrees better than the bundle's (agent.window), else the bundle's (none in older
        bundles)."""
        if target in self.window.stream_priors:
            value, figure = self.window.stream_priors[target]
            return Output(target, prior_outputs(value), "prior", (), figure, 0.0)
        try:
            prediction = self.ensembles.prior(target, self.profile)
        except LookupError:
            return None
        return Output(target, prediction.value, "prior", (), prediction.est_agreement, 0.0)

    def process(self, frame: Frame) -> FrameMessage | None:
        """One frame: its message (every published model's output, executed or predicted),
        None where no model is published."""
        with self.lock:
            self.last_frame = frame
            started = time.perf_counter()
            window_frames = self.window.stats.frames
            outputs: list[Output] = []
            try:
                outputs, message = self._process(frame)
            finally:
                elapsed = (time.perf_counter() - started) * 1e3
                self.overhead.loop_ms += elapsed
                self.overhead.frames += 1
            models_ms = sum(o.latency_ms for o in outputs if o.provenance in ("executed", "gated"))
            self.overhead.models_ms += models_ms
            if self.window.stats.frames == window_frames:  # not a window's frame
                self.own_ms.append(elapsed - models_ms - sum(
                    o.latency_ms for o in outputs if o.provenance == "predicted"))
            return message

    def _messages(self, frame: Frame, executed: dict[str, Ran]
                  ) -> tuple[list[Output], FrameMessage | None]:
        """The frame's outputs, and the message of those the publishing rules let out."""
        outputs = self._gated(frame, self._frame_outputs(frame, executed))
        published = self.publish_rules.apply(outputs, self.bundle.models, frame.camera)
        return outputs, self.payloads.make(frame, published, self.config.publish,
                                           self.bundle.models)

    def _runs(self, camera: int) -> frozenset[str]:
        """The models that run on the camera's frame in progress: the activated ones, and
        the `run/p` ones whose turn it is."""
        assert self.selection is not None
        if self.selection.plan is None:
            return self.selection.active
        failed = self.executor.unavailable()
        return self.selection.active | frozenset(
            m for m in self.timetable.due(camera) if m not in failed)

    def _process(self, frame: Frame) -> tuple[list[Output], FrameMessage | None]:
        self.timetable.tick(frame.camera)
        back, failures = self.executor.retry_due(frame)
        for failure in failures:
            self._count_failure(failure)
        for model_id, output in back.items():
            self._measure_links(model_id, output)
        changed = bool(back)
        if self._reselect.is_set():
            self._reselect.clear()
            changed = True
        if changed:
            self.reselect()
        if self.window.due(self.counters.started):
            self.window.begin(self.bundle, self.models)
        profiling = self.window.open
        assert self.selection is not None

        executed: dict[str, Ran] = {}
        tried: set[str] = set()
        extra_ms = 0.0
        # Outside a window the predictions and messages are made where the models ran, in the
        # same handoff (the caches the models left are the ones the links read), unless one
        # fails.
        then = None if profiling else partial(self._messages, frame)
        made: tuple[list[Output], FrameMessage | None] | None = None
        while True:
            active = self._runs(frame.camera)
            to_run = [m for m in sorted(active) if m not in tried]
            if profiling:
                to_run += [m for m in self.executor.available()
                           if m not in tried and m not in active]
            if not to_run:
                break
            active_failed = False
            tried.update(to_run)
            outcomes, made = self.executor.run_models(frame, to_run, then)
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
            self.reselect()  # the failed model is predicted; newly activated ones run now

        for model_id, ran in executed.items():
            self.timetable.record(model_id, frame.camera, ran.output)
        if profiling:
            self.window.record(frame, {m: r.output for m, r in executed.items()})
        if made is None:
            if profiling:
                start = time.perf_counter()
                self.window.score({m: r.output for m, r in executed.items()},
                                  self.selection.active, self.bundle, self.ensembles,
                                  self.costs)
                self._calibrate({m: r.output for m, r in executed.items()})
                extra_ms += (time.perf_counter() - start) * 1e3
            made = self._messages(frame, executed)
        outputs, message = made
        self.counters.executed += sum(o.executed for o in outputs)
        self.counters.predicted += sum(o.provenance == "predicted" for o in outputs)
        self.counters.prior += sum(o.provenance == "prior" for o in outputs)
        self.counters.reused += sum(o.provenance == "reused" for o in outputs)
        self.counters.gated += sum(o.provenance == "gated" for o in outputs)
        self.counters.no_output += len(self.models) - len({o.model for o in outputs})

        if self.window.count_frame(profiling, extra_ms):
            self._end_window()
        return outputs, message

    def _end_window(self) -> None:
        selection = self.selection
        assert selection is not None
        extra_memory_mb = sum(self.model_costs[m].get("memory_mb") for m in self.models
                              if m not in selection.resident and m not in self.gate.models)
        self.window.end(self.bundle, extra_memory_mb)
        if self.drift is not None:  # what the window measured of the selection it served
            self.drift.observe(self.window.agreement_gap(
                self.bundle.profile, selection.predicted, selection.active))
        self.reselect()  # unloads what is not activated
        log.info("profiling window done: %s", self.window.online.summary())

    # -- reporting -------------------------------------------------------------------------
    def status(self, state: str) -> dict[str, object]:
        """The retained status; safe from any thread (waits for the frame in progress)."""
        with self.lock:
            active = self.selection.resident if self.selection else frozenset()
            selection = self.selection.to_dict() if self.selection else None
            if selection is not None and "plan" in selection:
                selection["schedule"] = self.timetable.to_dict()
                selection["gate"] = self.gate.to_dict()
                selection["agent_ms_reserved"] = round(self.reserved_ms, 4)
            sections = Sections(
                selection=selection,
                budget=self._budget(),
                models=self.executor.status(active),
                profiling=self.window.to_dict(self.overhead.loop_ms),
                sources=self.source.stats(),
                publishing=self.publish_rules.counts(),
            )
            return self.status_builder.build(
                state, sections, self.counters, self.overhead, self.publisher,
                config_version=self.config_version, bundle=self.bundle.root,
                measured_at=self.measured_at)

    def cost_figures(self) -> dict[str, object]:
        """The measured costs of every model and link, and the memory probe: the retained
        `status/costs` message (agent.status.CostsReport)."""
        with self.lock:
            probe = self.executor.probe
            return {**self.costs.to_dict(self.models, self._link_pairs()),
                    "probe": probe.name, "probe_details": probe.details(),
                    "warm_up_mb": self.warm_up_mb}

    def publish_status(self, state: str) -> None:
        """The status; and `status/costs` where a cost moved since it was last published."""
        if self.publisher:
            topics = self.publisher.topics
            self.publisher.publish(topics.status, self.status(state), qos=1, retain=True)
            with self.lock:  # control actions publish the status from their own thread
                costs = self.cost_figures()
                due = self.status_builder.costs.due(costs)
            if due:
                self.publisher.publish(topics.status_costs, CostsReport.message(costs), qos=1,
                                       retain=True)

    # -- the loop --------------------------------------------------------------------------
    def start(self) -> Iterator[Frame]:
        """Measure and select on the first frame; return the stream including that frame."""
        frames = self.source.frames()
        first = next(frames, None)
        if first is None:
            raise RuntimeError(f"source {self.config.source_type!r} yielded no frame")
        self.last_frame = first
        self.measure(first)
        self.apply(self.select())
        return itertools.chain([first], frames)

    def run(self, max_frames: int | None = None,
            on_frame: Callable[[Frame], None] | None = None) -> Counters:
        """The loop until the frames end, `max_frames`, or `stop_event`; `on_frame` after
        each frame processed (before its outputs are published)."""
        frames = self.start()
        limit = max_frames or self.config.max_frames
        self.counters.started = time.monotonic()  # fps over the loop; measuring's errors kept
        self.publish_status("running")
        last_status = time.monotonic()
        for frame in frames:
            if self.stop_event.is_set():
                break
            # back-pressure: a frame whose outputs could not be kept is skipped, and counted
            held = self.publisher is not None and self.publisher.hold_frame()
            self.counters.frames_skipped += held
            try:
                message = None if held else self.process(frame)
            except Exception:  # the loop never stops for one frame
                self.counters.frame_errors += 1
                log.exception("frame %s failed", frame.frame_id)
                message = None
            else:
                if on_frame is not None:
                    on_frame(frame)
            started = time.perf_counter()
            if message is not None and self.publisher:
                self.payloads.send(message, self.publisher, self.config.publish)
            self.overhead.publish_ms += (time.perf_counter() - started) * 1e3
            self.counters.frames += 1
            if time.monotonic() - last_status > self.config.mqtt.status_every_s:
                self.publish_status("running")
                last_status = time.monotonic()
            if limit is not None and self.counters.frames >= limit:
                break
        self.publish_status("stopped")
        return self.counters


def output_widths(bundle: Bundle) -> dict[str, int]:
    return {m: spec.output_width for m, spec in bundle.models.items()}
