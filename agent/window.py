"""The profiling window: when one is due, what it runs, and what it leaves behind.

Every `[profiling] period_frames` frames or `period_s` seconds, or on request, the next
`sample_frames` frames run every available model (the agent loads the non-activated ones for
the window, measuring their memory and delay), run every link between vector models that ran,
and score the ensemble of each source subset, and each model's prior, against the exact
outputs (agent.profiling). At the end of the window the online figures are blended into the
bundle's, the bundle's counted as `min_samples` frames (`profile`); the agent then selects
again. The window's
extra work is timed and reported. The window's consecutive exact outputs also measure each
model's reuse curve (`reuse`, agent.profiling.ReuseMeter): what a plan's `run/p` serves
between its runs; and each model's stream prior (`stream_priors`, links_tflite.prior
.stream_prior): the constant that stands for the window's outputs, served in place of the
bundle's prior where it agrees better on frames it was not fit on. Given a store
(agent.windowstore, `[fleet] keep_windows`), the window hands it its frames at its end: every
model's exact outputs, the rows links are trained on when the box's links are relinked.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from agent.config import ProfilingConfig
from agent.costbook import CostBook
from agent.profiling import PRIOR, OnlineAgreement, ReuseMeter, subsets_to_score
from agent.sources import Frame
from agent.windowstore import WindowFrame, WindowStore
from links_tflite.agreement import mean_agreement
from links_tflite.bundle import Bundle, Profile
from links_tflite.ensemble import EnsemblePredictor, LinkRunner, open_link
from links_tflite.prior import prior_outputs, stream_prior

log = logging.getLogger(__name__)


@dataclass
class ProfilingStats:
    windows: int = 0
    frames: int = 0
    cost_ms: float = 0.0  # the windows' extra work, all windows
    last_window_cost_ms: float = 0.0
    last_window_extra_memory_mb: float = 0.0
    last_end: float | None = None  # monotonic


class ProfilingWindow:
    def __init__(self, settings: ProfilingConfig, profile: Profile,
                 store: WindowStore | None = None) -> None:
        self.settings = settings
        self.store = store
        self.online = OnlineAgreement(settings.agreement_window, settings.min_samples)
        self.reuse = ReuseMeter(settings.agreement_window)
        self.profile = profile  # the bundle's, then online where measured
        # the windows' constants that agree better than the bundle's priors: model ->
        # (output, its figure on the window's frames it was not fit on)
        self.stream_priors: dict[str, tuple[np.ndarray, float]] = {}
        self.stats = ProfilingStats()
        self.left = 0  # frames left in the window in progress
        self.frames_since = 0  # since the last window
        # vector targets only: online scoring pools activated outputs, not token sequences
        self._links: dict[tuple[str, str], LinkRunner] = {}
        self._requested = threading.Event()
        # the window's exact outputs in stream order: model -> [(camera, output)]
        self._sequence: dict[str, list[tuple[int, np.ndarray]]] = {}
        self._frames: list[WindowFrame] = []  # the same per frame, for the store
        self._models: frozenset[str] = frozenset()  # the models the agent runs

    def rebase(self, profile: Profile) -> None:
        """Another bundle's profile in force: the online figures, measured on its
        predecessor's links and priors, are dropped (the reuse curves and stream priors stay:
        they are the models' own)."""
        self.online = OnlineAgreement(self.settings.agreement_window, self.settings.min_samples)
        self.profile = self._with_stream_priors(profile)

    def _with_stream_priors(self, profile: Profile) -> Profile:
        """`profile` with each stream prior's figure where it beats the prior figure there.
        A stream prior that no longer does is dropped."""
        priors = dict(profile.priors)
        for model, (_, figure) in list(self.stream_priors.items()):
            if model in priors and priors[model] >= figure:
                del self.stream_priors[model]
            else:
                priors[model] = figure
        return dataclasses.replace(profile, priors=priors)

    @property
    def open(self) -> bool:
        return self.left > 0

    def request(self) -> None:
        """Open a window at the next frame (safe from any thread)."""
        self._requested.set()

    def due(self, loop_started: float) -> bool:
        if self.left > 0:
            return False
        if self._requested.is_set():
            self._requested.clear()
            return True
        if self.settings.period_frames and self.frames_since >= self.settings.period_frames:
            return True
        last = self.stats.last_end or loop_started
        return bool(self.settings.period_s) and time.monotonic() - last >= self.settings.period_s

    def begin(self, bundle: Bundle, model_ids: Iterable[str]) -> None:
        models = set(model_ids)
        self.left = self.settings.sample_frames
        self.stats.last_window_cost_ms = 0.0
        self._sequence = {}
        self._frames = []
        self._models = frozenset(models)
        self._links = {
            (link.source, link.target): open_link(bundle, link)
            for link in bundle.links
            if link.source in models and link.target in models
            and bundle.models[link.target].kind != "sequence"
        }
        log.info("profiling window: %d frames, every model runs", self.left)

    def score(self, outputs: Mapping[str, np.ndarray], active: Iterable[str], bundle: Bundle,
              ensembles: EnsemblePredictor, costs: CostBook) -> None:
        """Run every link between models that ran, and score every subset's ensemble and
        every model's prior."""
        for target, exact in outputs.items():
            prior = bundle.priors.get(target)
            if prior is not None:
                self.online.add(target, PRIOR, mean_agreement(
                    bundle.models[target], prior_outputs(prior.output), exact))
            link_outputs: dict[str, np.ndarray] = {}
            for link in bundle.links_into(target):
                runner = self._links.get((link.source, link.target))
                if runner is None or link.source not in outputs:
                    continue
                start = time.perf_counter()
                link_outputs[link.source] = runner.run_one(outputs[link.source])
                costs.link(link.source, target).add_delay((time.perf_counter() - start) * 1e3)
            if not link_outputs:
                continue
            subsets = subsets_to_score(sorted(link_outputs), active,
                                       self.settings.online_subsets_max_sources)
            self.online.score_frame(bundle.models[target], target, exact, link_outputs,
                                    ensembles.rule(target), subsets)

    def record(self, frame: Frame, outputs: Mapping[str, np.ndarray]) -> None:
        """A window frame's exact outputs, for the reuse curves measured at its end (and the
        store)."""
        for model, output in outputs.items():
            self._sequence.setdefault(model, []).append((frame.camera, output))
        if self.store is not None:
            self._frames.append(WindowFrame(frame.camera, frame.ts, dict(outputs)))

    def count_frame(self, in_window: bool, extra_ms: float) -> bool:
        """One frame done, with `extra_ms` of the window's work; True where it closed the
        window (the caller then calls `end` and selects again)."""
        self.frames_since += 1
        if not in_window:
            return False
        self.stats.frames += 1
        self.stats.cost_ms += extra_ms
        self.stats.last_window_cost_ms += extra_ms
        self.left -= 1
        return self.left == 0

    def end(self, bundle: Bundle, extra_memory_mb: float) -> None:
        self._links = {}
        for model, rows in self._sequence.items():
            if model in bundle.models and len(rows) > 1:
                outputs = np.stack([o for _, o in rows])
                self.reuse.add(bundle.models[model], model, outputs,
                               np.array([c for c, _ in rows]))
                self.stream_priors[model] = stream_prior(bundle.models[model], outputs)
        self.profile = self._with_stream_priors(self.online.profile(bundle.profile))
        self._sequence = {}
        if self.store is not None:
            self.store.add({m: bundle.models[m] for m in sorted(self._models)
                            if m in bundle.models}, self._frames)
        self._frames = []
        self.stats.windows += 1
        self.stats.last_end = time.monotonic()
        self.stats.last_window_extra_memory_mb = extra_memory_mb
        self.frames_since = 0

    def agreement_gap(self, base: Profile, predicted: Iterable[str], active: Iterable[str]
                      ) -> tuple[float, float] | None:
        """For the predicted models whose ensemble from the activated ones the windows have
        measured: the mean of the bundle's figure (`base`) and of the live one, for those
        same ensembles; None where none is measured."""
        active = frozenset(active)
        offline, live = [], []
        for target in predicted:
            usable = frozenset(s for s in active if s in base.pairwise.get(target, {}))
            figure = self.online.figure(target, usable) if usable else None
            if figure is not None:
                offline.append(base.ensemble_agreement(target, usable))
                live.append(figure)
        if not live:
            return None
        return float(np.mean(offline)), float(np.mean(live))

    def to_dict(self, loop_ms: float) -> dict[str, object]:
        """The status's `profiling` section; `loop_ms`: the loop's time, for the share."""
        stats, last = self.stats, self.stats.last_end
        return {
            "period_frames": self.settings.period_frames,
            "period_s": self.settings.period_s,
            "sample_frames": self.settings.sample_frames,
            "windows": stats.windows,
            "in_window": self.left > 0,
            "age_s": None if last is None else round(time.monotonic() - last, 3),
            "cost_ms": round(stats.cost_ms, 3),
            "last_window_cost_ms": round(stats.last_window_cost_ms, 3),
            "last_window_extra_memory_mb": round(stats.last_window_extra_memory_mb, 3),
            "share_of_loop_time": round(stats.cost_ms / loop_ms, 6) if loop_ms else 0.0,
            "online": self.online.summary(),
            "reuse": self.reuse.summary(),
            "stream_priors": {m: round(f, 4) for m, (_, f) in sorted(self.stream_priors.items())},
        }
