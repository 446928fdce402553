"""Online agreement: how well the links predict the models on this box's stream, now.

During a profiling window every available model runs, so each target's exact output sits
beside its links' predictions. Each (target, source subset) keeps the per-frame agreement of
the ensemble over that subset on the last `window` profiling frames. In the profile the
selection uses, the figure is the online mean with the bundle's offline figure counted as
`min_samples` more frames: (n x online + min_samples x offline) / (n + min_samples), so the
choice follows the stream as it drifts, while a figure that rests on a few frames (a short
window that happened to agree on all of them) cannot overrule the held-out profile alone.
Where the bundle has no figure (a subset it did not profile), the online mean is used once it
rests on `min_samples` frames. A target's prior (the bundle's constant
predictor) is scored the same way, under the empty subset (`PRIOR`): a plan serves it, and a
recording's figure for it can be far from the stream's (a constant agrees with a stream
whose output stays put, not with one that moves).
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Iterable, Mapping

import numpy as np

from links_tflite.agreement import mean_agreement
from links_tflite.bundle import Profile
from links_tflite.ensemble import EnsembleRule, combine_outputs
from links_tflite.tasks import TaskSpec
from links_tflite.temporal import reuse_curve

log = logging.getLogger(__name__)


def subsets_to_score(sources: list[str], active: Iterable[str],
                     max_sources: int) -> list[frozenset[str]]:
    """Every non-empty subset of `sources` when there are at most `max_sources` of them;
    otherwise the single links, the activated set's subset and the full set."""
    if len(sources) <= max_sources:
        return [frozenset(c) for size in range(1, len(sources) + 1)
                for c in itertools.combinations(sources, size)]
    chosen = {frozenset([s]) for s in sources} | {frozenset(sources)}
    in_active = frozenset(s for s in sources if s in set(active))
    if in_active:
        chosen.add(in_active)
    return sorted(chosen, key=lambda c: (len(c), sorted(c)))


PRIOR: frozenset[str] = frozenset()  # the key of a target's prior figure: no source read


class OnlineAgreement:
    def __init__(self, window: int, min_samples: int) -> None:
        self.window = window
        self.min_samples = min_samples
        self._samples: dict[tuple[str, frozenset[str]], deque[float]] = {}

    def add(self, target: str, sources: frozenset[str], value: float) -> None:
        samples = self._samples.setdefault((target, sources), deque(maxlen=self.window))
        samples.append(float(value))

    def figure(self, target: str, sources: frozenset[str]) -> float | None:
        samples = self._samples.get((target, sources))
        if samples is None or len(samples) < self.min_samples:
            return None
        return float(np.mean(samples))

    def score_frame(self, spec: TaskSpec, target: str, exact: np.ndarray,
                    link_outputs: Mapping[str, np.ndarray], rule: EnsembleRule,
                    subsets: Iterable[frozenset[str]]) -> None:
        """One profiling frame: the ensemble of each subset against the exact output, the
        ensemble combining the links' (activated) outputs by the rule the agent predicts
        with (`EnsemblePredictor.rule`)."""
        for subset in subsets:
            prediction = combine_outputs(spec, rule.weights, {s: link_outputs[s] for s in subset},
                                         rule.pooling, rule.min_share)
            self.add(target, subset, mean_agreement(spec, prediction, exact))

    def blended(self, target: str, sources: frozenset[str], offline: float | None
                ) -> float | None:
        """The figure in force (module doc): the online mean with `offline` counted as
        `min_samples` frames; without `offline`, the online mean once it rests on enough."""
        samples = self._samples.get((target, sources))
        if not samples:
            return None
        if offline is None:
            return self.figure(target, sources)
        n, weight = len(samples), self.min_samples
        return float((n * np.mean(samples) + weight * offline) / (n + weight))

    def profile(self, base: Profile) -> Profile:
        """The bundle's profile with every figure measured online blended in (links,
        ensembles, priors)."""
        pairwise = {t: dict(row) for t, row in base.pairwise.items()}
        ensembles = {t: dict(table) for t, table in base.ensembles.items()}
        priors = dict(base.priors)
        for (target, sources), _ in self._samples.items():
            if sources == PRIOR:
                offline = base.priors.get(target)
            elif sources in base.ensembles.get(target, {}):
                offline = base.ensembles[target][sources]
            elif len(sources) == 1:
                offline = base.pairwise.get(target, {}).get(next(iter(sources)))
            else:
                offline = None
            value = self.blended(target, sources, offline)
            if value is None:
                continue
            if sources == PRIOR:
                priors[target] = value
                continue
            if len(sources) == 1:
                (source,) = sources
                pairwise.setdefault(target, {})[source] = value
            ensembles.setdefault(target, {})[sources] = value
        return Profile(pairwise=pairwise, ensembles=ensembles, links=base.links,
                       held_out_frames=base.held_out_frames, priors=priors)

    def summary(self) -> dict[str, int]:
        ready = sum(1 for key in self._samples if self.figure(*key) is not None)
        return {"figures": len(self._samples), "figures_in_use": ready,
                "samples": sum(len(s) for s in self._samples.values())}


MAX_REUSE_AGE = 15  # ages measured: up to the longest `run/p` period a plan uses, less one
MIN_REUSE_PAIRS = 5  # frame pairs an age needs before its figure is used


class ReuseMeter:
    """Reuse curves measured live (links_tflite.temporal): in each profiling window every
    model runs on consecutive frames, so its output on a frame can be compared with its own
    output a frames later on the same camera. Per model and age the window's pairs are added
    to those of earlier windows, the older ones scaled down so that at most `cap` pairs count
    (the latest windows weigh most); a curve runs from age 1 up to the first age resting on
    fewer than `MIN_REUSE_PAIRS` pairs."""

    def __init__(self, cap: int, max_age: int = MAX_REUSE_AGE) -> None:
        self.cap = cap
        self.max_age = max_age
        self._sums: dict[str, np.ndarray] = {}
        self._pairs: dict[str, np.ndarray] = {}

    def add(self, spec: TaskSpec, model: str, outputs: np.ndarray, cameras: np.ndarray) -> None:
        """A window's outputs of one model in stream order, with each frame's camera."""
        values, counts = reuse_curve(spec, outputs, cameras, self.max_age)
        sums = self._sums.setdefault(model, np.zeros(self.max_age))
        pairs = self._pairs.setdefault(model, np.zeros(self.max_age))
        ages = len(values)
        sums[:ages] += np.asarray(values) * np.asarray(counts)
        pairs[:ages] += counts
        over = pairs > self.cap
        scale = np.where(over, self.cap / np.maximum(pairs, 1), 1.0)
        sums *= scale
        pairs *= scale

    def curves(self) -> dict[str, tuple[float, ...]]:
        result = {}
        for model, pairs in self._pairs.items():
            short = np.flatnonzero(pairs < MIN_REUSE_PAIRS)
            ages = int(short[0]) if len(short) else self.max_age
            if ages:
                result[model] = tuple(float(v) for v in self._sums[model][:ages] / pairs[:ages])
        return result

    def summary(self) -> dict[str, object]:
        """For the status: each measured curve, rounded."""
        return {m: [round(v, 4) for v in c] for m, c in sorted(self.curves().items())}
