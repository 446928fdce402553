"""The methods compared under a budget, each run through the real agent on the stream.

Every method is the agent (`agent.scheduler.Agent`, LiteRT, no TensorFlow in the path) with
an activated set, optionally behind a frame filter:
- `standalone`: the cheapest models first while they fit, no links, nothing for the rest (the
  paper's baseline);
- `standalone+prior`: the same set, the bundle's prior for every other model (as the agent
  serves it): the simplest thing a user could pick without training links;
- `standalone+stream-prior`: the same set, and for every other model the constant that
  stood for its outputs on the profiling window (every model run there; the agent's stream
  prior, `agent.window`) where it agreed better there than the bundle's prior: what a user
  could pick without a bundle at all, by running every model for a while;
- `mlink-activation` / `mlink-exact`: the agent's selection policies under the budget;
- `filtering`: every model, but only on the frames the filter lets through; the others reuse
  the last processed frame's outputs;
- `mlink+filtering`: an activated set chosen under budget / q, behind a filter processing a
  share q of the frames, with q picked on the calibration frames among the shares that
  include both ingredients alone (q = 1: MLink; all models at q = budget share: filtering);
- `plan`: the agent with the `plan` policy and the budget as the service runs it
  (`plans.profile_and_plan`): it plans at start-up from the bundle's figures, measures its
  own time per frame, measures the ensembles and reuse curves in a profiling window over the
  stream's profiling part, plans again with them (an action per model: `run`, `run/p` with
  its output reused in between, `predict`, `prior` (the bundle's or the window's stream
  prior, whichever agreed better in the window); under a delay budget its own time per
  frame reserved out of the budget first), and runs that plan on the test part;
- `all`: every model on every frame, the reference.
Beside them, at each budget (the agent's reserve taken off a delay budget, as for its plan):
- the *ceiling*: the best expected agreement of any plan in the action space, from the
  per-action agreements measured on the test part itself (an oracle);
- the *offline plan* (`Evaluator.offline_plan`): `agent.planning.plan_exact` on the
  per-action agreements the evaluation measures on the profiling part (`actions`: the
  stream's priors, every source subset's ensemble, reuse up to 16 frames), run by the same
  loop after the same profiling part in place of the agent's own plan. Beside `plan` it shows
  what the agent's figures (the window's online ones, over fewer frames) cost or gain.

A budget share b means b x the models' total measured cost of one resource. A filter saves
computation, not memory: filtering methods are charged q x the use of their set (the share
of frames processed times what runs on them) in both resources. That is the reading of the
paper's frame-filtering baseline (a budget of 1/3 of the models is 1/3 of the inference
computations), and it favours filtering under a memory budget, where its peak is the
whole set's memory: the tables report that peak beside, and the *strict* reading (what must
be resident at once fits the budget; a filter saves no memory, so strictly it keeps only the
models that fit: Standalone+prior's set for `filtering`, MLink's for `mlink+filtering`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from agent.costs import Cost
from agent.output import model_entries
from agent.planning import PREDICT, PRIOR, RUN, Action, Plan, plan_exact, run_agreement
from agent.policies.plan import plan_selection
from agent.scheduler import Agent
from agent.selection import RESOURCES, Problem, Selection, SelectionError, get_policy
from agent.sources.base import Frame
from links_tflite.agreement import mean_agreement
from links_tflite.prior import prior_outputs
from offline_trainer.evaluation.actions import ActionFigures, measure_actions
from offline_trainer.evaluation.filtering import FrameFilter, calibrate_threshold
from offline_trainer.evaluation.plans import profile_and_plan
from offline_trainer.evaluation.stream import Stream

log = logging.getLogger(__name__)

METHODS = ("standalone", "standalone+prior", "standalone+stream-prior", "mlink-activation",
           "mlink-exact", "filtering", "mlink+filtering", "plan", "all")
POLICY_OF = {"standalone": "standalone", "standalone+prior": "standalone",
             "standalone+stream-prior": "standalone",
             "mlink-activation": "activation", "mlink-exact": "exact", "all": "all"}
# strictly (what must be resident at once within a memory budget), a method whose peak does
# not fit keeps the models that fit: this method's result stands for it
STRICT_FALLBACK = {"filtering": "standalone+prior", "mlink+filtering": "mlink-exact"}
COMBINED_SHARES = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)
WARMUP_FRAMES = 5


@dataclass(frozen=True)
class Scored:
    """What a run of the agent over frames achieved."""

    agreement: float  # mean over models and frames vs the exact outputs (0 where none)
    accuracy: float  # the same against the ground truth
    ms_per_frame: float  # wall time: filter + agent.process
    model_ms_per_frame: float  # the executed models' own inference time
    processed_share: float
    fallbacks: int = 0  # reuse the timetable could not serve (Counters.reuse_fallbacks)


@dataclass(frozen=True)
class MethodResult:
    method: str
    resource: str
    share: float
    budget: float
    active: tuple[str, ...]
    filter_share: float  # the share of frames the filter was tuned to process (1: no filter)
    expected: float | None  # the profile's expected agreement (None behind a filter)
    use: float  # charged against the budget: filter_share x the set's use
    peak: float  # the set's own use: what must be resident at once
    replaced_delay_ms: float  # measured delay of the models predicted or skipped
    scored: Scored | None  # None: nothing fits
    note: str = ""
    actions: dict[str, str] = field(default_factory=dict)  # `plan`: each model's action
    on_test: float | None = None  # `plan`: its expected agreement from the test's figures
    reserved_ms: float = 0.0  # `plan`: its own time the agent took off a delay budget


@dataclass(frozen=True)
class Ceiling:
    """The best plan at a budget by the test part's own per-action figures (an oracle)."""

    resource: str
    share: float
    budget: float  # what the plans were given (the agent's own fixed work taken off delay)
    value: float
    actions: dict[str, str]


def run_frames(agent: Agent, frames: Sequence[Frame], selection: Selection,
               exact: dict[str, np.ndarray], truth: dict[str, np.ndarray],
               frame_filter: FrameFilter | None = None, priors: bool = True) -> Scored:
    """Run the agent over the frames with this activated set and score what it published
    (without the priors it served, where `priors` is False)."""
    agent.apply(selection)
    for frame in frames[:WARMUP_FRAMES]:  # first inferences allocate: not timed, not scored
        agent.process(frame)
    if frame_filter is not None:
        frame_filter.reset()
    return score_frames(agent, frames, exact, truth, frame_filter, priors)


def score_frames(agent: Agent, frames: Sequence[Frame], exact: dict[str, np.ndarray],
                 truth: dict[str, np.ndarray], frame_filter: FrameFilter | None = None,
                 priors: bool = True) -> Scored:
    """Run the agent's loop over the frames as it stands and score what it published."""
    models = list(agent.models)
    fallbacks = agent.counters.reuse_fallbacks
    values: dict[str, list[np.ndarray | None]] = {m: [] for m in models}
    last: dict[int, dict[str, np.ndarray]] = {}
    elapsed = model_ms = 0.0
    processed = 0
    for frame in frames:
        start = time.perf_counter()
        if frame_filter is None or frame_filter.should_process(frame):
            message = agent.process(frame)
            elapsed += time.perf_counter() - start
            payloads = model_entries(message)
            processed += 1
            last[frame.camera] = {str(p["model"]): np.asarray(p["value"], np.float32)
                                  for p in payloads if priors or p["provenance"] != "prior"}
            model_ms += sum(float(p["latency_ms"]) for p in payloads
                            if p["provenance"] == "executed")
        else:
            elapsed += time.perf_counter() - start
        outputs = last.get(frame.camera, {})
        for m in models:
            values[m].append(outputs.get(m))
    n = max(1, len(frames))
    return Scored(
        agreement=_score(agent, values, exact),
        accuracy=_score(agent, values, truth),
        ms_per_frame=elapsed * 1e3 / n,
        model_ms_per_frame=model_ms / n,
        processed_share=processed / n,
        fallbacks=agent.counters.reuse_fallbacks - fallbacks,
    )


def _score(agent: Agent, values: dict[str, list[np.ndarray | None]],
           reference: dict[str, np.ndarray]) -> float:
    """Mean over models of the per-frame agreement with the reference; a frame without an
    output scores 0 for that model."""
    per_model = []
    for m, rows in values.items():
        spec = agent.bundle.models[m]
        present = [i for i, v in enumerate(rows) if v is not None]
        if not present or len(rows) == 0:
            per_model.append(0.0)
            continue
        shape = reference[m].shape[1:]
        got = np.stack([np.asarray(rows[i]).reshape(shape) for i in present])
        total = mean_agreement(spec, got, reference[m][present]) * len(present)
        per_model.append(total / len(rows))
    return float(np.mean(per_model)) if per_model else 0.0


def totals(agent: Agent) -> dict[str, float]:
    """The models' total measured cost per resource: what budget shares are shares of."""
    costs = agent.model_costs.values()
    return {r: float(sum(c.get(r) for c in costs)) for r in ("memory_mb", "delay_ms")}


def select(problem: Problem, policy: str) -> Selection | None:
    """The policy's choice, or None where nothing fits."""
    try:
        return get_policy(policy).select(problem)
    except SelectionError:
        return None


def replaced_delay(costs: dict[str, Cost], active: frozenset[str], processed: float = 1.0
                   ) -> float:
    """The measured delay of the work not done: models not activated, and every model on
    the frames the filter skips."""
    delays = {m: c.get("delay_ms") for m, c in costs.items()}
    inactive = sum(d for m, d in delays.items() if m not in active)
    return inactive + (1.0 - processed) * sum(d for m, d in delays.items() if m in active)


@dataclass
class Evaluator:
    """Runs each method at a budget on the test frames; filters are tuned on calibration."""

    agent: Agent
    stream: Stream
    total: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        self.total = totals(self.agent)
        # the costs measured at the start, for every method: running a method updates the
        # agent's delay figures, which would otherwise change the problem between methods
        self._frozen = self.agent.problem({})
        self._thresholds: dict[float, float] = {}
        self._results: dict[tuple[str, str, float], MethodResult] = {}
        rules = {t: self.agent.ensembles.rule(t) for t in self.agent.models}
        stream = self.stream
        self._costs = self.agent.costs.snapshot()
        # the stream priors the plan's window keeps: the agent's own, from its loop over the
        # profiling part (the window runs every model on the same frames at any budget)
        window = profile_and_plan(self.agent, self._costs, {}, stream.calibration).agent.window
        self.agent.costs.restore(self._costs)
        self.stream_priors = dict(window.stream_priors)
        bundle = self.agent.bundle
        # the offline plan's figures: the profiling part; the ceiling's: the test part itself
        self.profiled = measure_actions(
            bundle, rules, stream.calibration_exact,
            np.array([f.camera for f in stream.calibration]),
        ).with_priors({m: f for m, (_, f) in self.stream_priors.items()})
        self.tested = measure_actions(
            bundle, rules, stream.exact, np.array([f.camera for f in stream.test]),
        ).with_priors({m: mean_agreement(bundle.models[m], prior_outputs(v, len(stream.test)),
                                         stream.exact[m])
                       for m, (v, _) in self.stream_priors.items()})
        self._offline: dict[tuple[str, float], MethodResult] = {}

    def plan_budget(self, resource: str, share: float) -> dict[str, float]:
        """The budget the agent planned with at this share: a delay budget less the time per
        frame the agent reserved for its own work (`MethodResult.reserved_ms`)."""
        budget = share * self.total[resource]
        if resource == "delay_ms":
            # where the agent's own work takes the whole budget only the free actions fit (a
            # budget of exactly 0 divides by zero in agent.planning's budget shares)
            budget = max(1e-9, budget - self.method("plan", resource, share).reserved_ms)
        return {resource: budget}

    def ceiling(self, resource: str, share: float) -> Ceiling:
        """The best plan by the test part's own figures (module doc)."""
        budget = self.plan_budget(resource, share)
        plan = plan_exact(self.tested.problem(self._frozen, budget))
        return Ceiling(resource, share, budget[resource], plan.expected_agreement,
                       {m: str(a) for m, a in plan.actions.items()})

    @property
    def costs(self) -> dict[str, Cost]:
        """The models' costs every method is selected and charged with."""
        return self._frozen.model_costs

    def problem(self, budget: dict[str, float]) -> Problem:
        return dataclasses.replace(self._frozen, budget=budget)

    def threshold(self, share: float) -> float:
        if share not in self._thresholds:
            self._thresholds[share] = calibrate_threshold(self.stream.calibration, share)
        return self._thresholds[share]

    def method(self, method: str, resource: str, share: float) -> MethodResult:
        """The method's result at this budget (computed once per budget)."""
        key = (method, resource, round(share, 6))
        if key not in self._results:
            self._results[key] = self._method(method, resource, share)
        return self._results[key]

    def _method(self, method: str, resource: str, share: float) -> MethodResult:
        budget = share * self.total[resource]
        if method in POLICY_OF:
            return self._policy(method, resource, share, budget)
        if method == "filtering":
            q = min(1.0, share)
            selection = get_policy("all").select(self.problem({}))  # every model
            return self._result(method, resource, share, budget, selection, q,
                                self.stream.test, self.stream.exact, self.stream.truth)
        if method == "mlink+filtering":
            return self._combined(resource, share, budget)
        if method == "plan":
            return self._plan(resource, share, budget)
        raise ValueError(f"unknown method {method!r} (known: {', '.join(METHODS)})")

    def _policy(self, method: str, resource: str, share: float, budget: float) -> MethodResult:
        if method == "standalone+stream-prior":  # served as the agent serves its own
            self.agent.window.stream_priors = dict(self.stream_priors)
        try:
            return self._policy_run(method, resource, share, budget)
        finally:
            self.agent.window.stream_priors = {}

    def _policy_run(self, method: str, resource: str, share: float, budget: float
                    ) -> MethodResult:
        policy = POLICY_OF[method]
        selection = select(self.problem({} if policy == "all" else {resource: budget}), policy)
        if selection is None and method != "standalone" and policy == "standalone":
            figures = {**self.agent.bundle.profile.priors,  # the priors, free
                       **{m: f for m, (_, f) in self.agent.window.stream_priors.items()}}
            plan = Plan({m: Action(PRIOR) for m in self.agent.models},
                        {r: 0.0 for r in RESOURCES},
                        float(np.mean([figures.get(m, 0.0) for m in self.agent.models])))
            scored = run_frames(self.agent, self.stream.test, plan_selection(plan),
                                self.stream.exact, self.stream.truth)
            return self._plan_result(method, resource, share, budget, plan, scored, 0.0)
        if selection is None:
            return self._nothing(method, resource, share, budget)
        return self._result(method, resource, share, budget, selection, 1.0,
                            self.stream.test, self.stream.exact, self.stream.truth,
                            priors=method != "standalone")

    def _plan(self, resource: str, share: float, budget: float, offline: Plan | None = None
              ) -> MethodResult:
        """The agent's loop with the `plan` policy (`plans.profile_and_plan`), or with the
        `offline` plan in place of its own; scored on the test frames."""
        planned = profile_and_plan(self.agent, self._costs, {resource: budget},
                                   self.stream.calibration, offline=offline)
        loop, selection = planned.agent, planned.selection
        assert selection.plan is not None
        scored = score_frames(loop, self.stream.test, self.stream.exact, self.stream.truth)
        self.agent.costs.restore(self._costs)  # the loop's figures stay with it
        reserved = loop.reserved_ms if resource == "delay_ms" else 0.0
        return self._plan_result("plan", resource, share, budget, selection.plan, scored,
                                 reserved)

    def offline_plan(self, resource: str, share: float) -> MethodResult:
        """The plan `plan_exact` makes from the per-action figures measured on the profiling
        part (`actions`), at the budget the agent planned with, run by the loop in place of
        the agent's own (module doc); the agent's run where the two plans are the same."""
        key = (resource, round(share, 6))
        if key not in self._offline:
            own = self.method("plan", resource, share)
            plan = plan_exact(self.profiled.problem(self._frozen,
                                                    self.plan_budget(resource, share)))
            if {m: str(a) for m, a in plan.actions.items()} == own.actions:
                self._offline[key] = dataclasses.replace(own, expected=plan.expected_agreement)
            else:
                ran = self._plan(resource, share, own.budget, plan)
                self._offline[key] = dataclasses.replace(
                    ran, expected=plan.expected_agreement, reserved_ms=own.reserved_ms,
                    use=plan.use[resource] + own.reserved_ms * (resource == "delay_ms"))
        return self._offline[key]

    def _plan_result(self, method: str, resource: str, share: float, budget: float, plan: Plan,
                     scored: Scored, reserved: float) -> MethodResult:
        runs = {m: a.period for m, a in plan.actions.items() if a.kind == RUN}
        replaced = sum(c.get("delay_ms") * (1.0 - 1.0 / runs[m] if m in runs else 1.0)
                       for m, c in self.costs.items())
        return MethodResult(
            method=method, resource=resource, share=share, budget=budget,
            active=tuple(sorted(runs)), filter_share=1.0,
            expected=plan.expected_agreement, use=plan.use[resource] + reserved,
            peak=plan.use[resource] + reserved, replaced_delay_ms=replaced, scored=scored,
            actions={m: str(a) for m, a in plan.actions.items()},
            on_test=plan_value(plan, self.tested), reserved_ms=reserved)

    def _combined(self, resource: str, share: float, budget: float) -> MethodResult:
        """The best (q, activated set under budget / q) on the calibration frames."""
        best: tuple[float, float, Selection] | None = None
        for q in sorted({*[s for s in COMBINED_SHARES if s >= share], min(1.0, share)}):
            # (share / q) first: exactly 1.0 at q = share, so that every model fits there
            selection = select(self.problem({resource: share / q * self.total[resource]}), "exact")
            if selection is None:
                continue
            scored = self._run(selection, q, self.stream.calibration,
                               self.stream.calibration_exact, self.stream.calibration_truth)
            log.info("mlink+filtering %s %.2f: q %.2f active %s -> %.4f", resource, share, q,
                     sorted(selection.active), scored.agreement)
            if best is None or scored.agreement > best[0] + 1e-12:
                best = (scored.agreement, q, selection)
        if best is None:
            return self._nothing("mlink+filtering", resource, share, budget)
        _, q, selection = best
        return self._result("mlink+filtering", resource, share, budget, selection, q,
                            self.stream.test, self.stream.exact, self.stream.truth)

    def _run(self, selection: Selection, q: float, frames: list[Frame],
             exact: dict[str, np.ndarray], truth: dict[str, np.ndarray],
             priors: bool = True) -> Scored:
        frame_filter = FrameFilter(self.threshold(q)) if q < 1.0 else None
        return run_frames(self.agent, frames, selection, exact, truth, frame_filter, priors)

    def _result(self, method: str, resource: str, share: float, budget: float,
                selection: Selection, q: float, frames: list[Frame],
                exact: dict[str, np.ndarray], truth: dict[str, np.ndarray],
                priors: bool = True) -> MethodResult:
        peak = selection.use[resource]  # at selection time: running updates the delays
        scored = self._run(selection, q, frames, exact, truth, priors)
        return MethodResult(
            method=method, resource=resource, share=share, budget=budget,
            active=tuple(sorted(selection.active)), filter_share=q,
            expected=selection.expected_agreement if q >= 1.0 else None,
            use=q * peak, peak=peak,
            replaced_delay_ms=replaced_delay(self.costs, selection.active,
                                             scored.processed_share),
            scored=scored,
        )

    def _nothing(self, method: str, resource: str, share: float, budget: float) -> MethodResult:
        return MethodResult(method=method, resource=resource, share=share, budget=budget,
                            active=(), filter_share=1.0, expected=None, use=0.0, peak=0.0,
                            replaced_delay_ms=0.0, scored=None, note="nothing fits")


def plan_value(plan: Plan, figures: ActionFigures) -> float:
    """A plan's expected agreement by these per-action figures (the objective of
    `agent.planning`, evaluated with another stretch's figures)."""
    total = 0.0
    for model, action in plan.actions.items():
        if action.kind == RUN:
            total += run_agreement(figures.reuse.get(model, ()), action.period)
        elif action.kind == PREDICT:
            total += figures.profile.ensemble_agreement(model, plan.active)
        else:
            total += figures.priors.get(model, 0.0) if action.kind == "prior" else 0.0
    return total / max(1, len(plan.actions))
