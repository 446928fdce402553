"""The confidence gate: under a delay budget, run a predicted model on the frames where its
prediction is least likely to agree with it, with the delay the plan leaves unused.

- A prediction's raw confidence is read from its own value (`raw_confidence`): the margin
  between the two most probable classes (single label), the mean distance of each label's
  probability from 0.5, doubled (multi label); other kinds have none.
- `Calibration` turns it into the probability that the prediction agrees with the model's
  exact output (its expected agreement, for the measures that score in between: IoU,
  tolerances averaged over dimensions), per target: the observed agreement of earlier
  predictions (the profiling windows, where every model runs beside its prediction, and the
  gate's own runs) in `BINS` equal bins of raw confidence, made monotone (pool adjacent
  violators); bins resting on fewer than `MIN_PAIRS` pairs do not count. Without a raw
  confidence, or without enough pairs, it is the observed agreement of all the target's
  predictions, else the profile's figure (`est_agreement`).
- `Gate` is a token bucket: each frame adds the delay the plan leaves (budget less the plan's
  use, ms), up to `HORIZON` frames' worth (at least one run of the slowest gated model).
  A frame's predictions are taken least confident first; one is run where its model's delay
  is in the bucket and its confidence is at most the share-quantile of the recent
  confidences (the share of predictions the spare delay affords), or where the bucket would
  otherwise overflow.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from agent.output import Output
from links_tflite.agreement import mean_agreement
from links_tflite.tasks import TaskSpec

Run = Callable[[str], tuple[np.ndarray, float] | None]  # a model's output and ms, or None

BINS = 10
MIN_PAIRS = 5
HORIZON = 10  # frames of spare delay the bucket holds
RECENT = 200  # confidences the threshold is a quantile of
CAP = 1000  # pairs per target that count (older ones scaled down)


def raw_confidence(spec: TaskSpec, value: np.ndarray) -> float | None:
    """How sure a prediction looks, in [0, 1], read from its value; None for kinds whose value
    says nothing about it."""
    v = np.clip(np.asarray(value, dtype=np.float64).reshape(-1), 0.0, 1.0)
    if spec.kind == "single_label" and len(v) >= 2:
        top = np.sort(v)[-2:]
        return float(top[1] - top[0])
    if spec.kind == "multi_label" and len(v):
        return float(np.mean(np.abs(2.0 * v - 1.0)))
    return None


def _monotone(means: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Pool adjacent violators: the non-decreasing fit of `means` weighted by `weights`."""
    blocks: list[list[float]] = []  # [mean, weight, length]
    for m, w in zip(means, weights, strict=True):
        blocks.append([float(m), float(w), 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, w2, n2 = blocks.pop()
            m1, w1, n1 = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    return np.concatenate([[m] * int(n) for m, _, n in blocks]) if blocks else np.zeros(0)


class Calibration:
    def __init__(self) -> None:
        self._sums: dict[str, np.ndarray] = {}  # per target: [bin] agreeing, bin BINS: no score
        self._counts: dict[str, np.ndarray] = {}

    def add(self, target: str, score: float | None, agreement: float) -> None:
        sums = self._sums.setdefault(target, np.zeros(BINS + 1))
        counts = self._counts.setdefault(target, np.zeros(BINS + 1))
        where = BINS if score is None else min(int(score * BINS), BINS - 1)
        sums[where] += agreement
        counts[where] += 1
        total = counts.sum()
        if total > CAP:
            sums *= CAP / total
            counts *= CAP / total

    def confidence(self, target: str, score: float | None, default: float) -> float:
        """The probability that a prediction with this raw confidence agrees (module doc)."""
        if target not in self._counts:
            return default
        sums, counts = self._sums[target], self._counts[target]
        if score is not None:
            bins = np.flatnonzero(counts[:BINS] >= MIN_PAIRS)
            if len(bins):
                fitted = _monotone(sums[bins] / counts[bins], counts[bins])
                where = min(int(score * BINS), BINS - 1)
                return float(np.interp(where, bins, fitted))
        return float(sums.sum() / counts.sum()) if counts.sum() >= MIN_PAIRS else default

    def summary(self) -> dict[str, int]:
        """For the status: the pairs behind each target's calibration."""
        return {t: round(float(c.sum())) for t, c in sorted(self._counts.items())}


class Gate:
    def __init__(self) -> None:
        self.models: dict[str, float] = {}  # model -> its delay per run, ms
        self.spare_ms = 0.0
        self.tokens = 0.0
        self.calibration = Calibration()
        self._recent: deque[float] = deque(maxlen=RECENT)

    @property
    def capacity(self) -> float:
        return max(HORIZON * self.spare_ms, max(self.models.values(), default=0.0))

    def set(self, models: Mapping[str, float], spare_ms: float) -> None:
        """The models the gate may run (loaded, predicted by the plan) with their delays, and
        the delay per frame the plan leaves."""
        self.models = dict(models)
        self.spare_ms = max(spare_ms, 0.0) if self.models else 0.0
        self.tokens = min(self.tokens, self.capacity)

    def choose(self, candidates: Sequence[tuple[float, str]]) -> list[str]:
        """Of this frame's predictions, (confidence, model), the models to run now."""
        candidates = [(c, m) for c, m in candidates if m in self.models]
        if not candidates or self.spare_ms <= 0.0:
            return []
        self.tokens = min(self.tokens + self.spare_ms, self.capacity)
        self._recent.extend(c for c, _ in candidates)
        cost = sum(self.models[m] for _, m in candidates)
        share = min(1.0, self.spare_ms / cost) if cost > 0 else 1.0
        threshold = float(np.quantile(np.fromiter(self._recent, float), share))
        chosen = []
        for confidence, model in sorted(candidates):
            delay = self.models[model]
            if delay > self.tokens:
                continue
            if confidence <= threshold or self.tokens + self.spare_ms > self.capacity:
                chosen.append(model)
                self.tokens -= delay
        return chosen

    def replace(self, outputs: list[Output], specs: Mapping[str, TaskSpec], run: Run,
                failed: Iterable[str] = ()) -> list[Output]:
        """The frame's outputs with the least confident predictions the bucket affords
        replaced by the model's own output (provenance `gated`); `run(model)` runs it (None
        where it failed). Each run calibrates."""
        if not self.models:
            return outputs
        excluded = set(failed)
        scores = {}
        candidates = []
        for output in outputs:
            model = output.model
            if output.provenance == "predicted" and model in self.models \
                    and model not in excluded:
                scores[model] = raw_confidence(specs[model], output.value)
                candidates.append((self.calibration.confidence(
                    model, scores[model], output.est_agreement), model))
        chosen = set(self.choose(candidates))
        confidence = {model: round(float(c), 4) for c, model in candidates}
        result = []
        for output in outputs:
            ran = run(output.model) if output.model in chosen else None
            if ran is not None:
                value, ms = ran
                self.calibration.add(output.model, scores[output.model], mean_agreement(
                    specs[output.model], output.value, value))
                output = Output(output.model, value, "gated", (output.model,), 1.0, ms)
            elif output.model in confidence:  # published with the prediction
                output = dataclasses.replace(output, confidence=confidence[output.model])
            result.append(output)
        return result

    def calibrate(self, exact: Mapping[str, np.ndarray], specs: Mapping[str, TaskSpec],
                  predict: Callable[[str], np.ndarray | None]) -> None:
        """In a profiling window, where every model ran: each gated model's prediction
        (`predict(model)`, None where there is none) beside its exact output."""
        for target in self.models:
            if target not in exact:
                continue
            value = predict(target)
            if value is not None:
                self.calibration.add(target, raw_confidence(specs[target], value),
                                     mean_agreement(specs[target], value, exact[target]))

    def to_dict(self) -> dict[str, object]:
        return {"models": sorted(self.models), "spare_ms": round(self.spare_ms, 4),
                "tokens_ms": round(self.tokens, 4),
                "calibration_pairs": self.calibration.summary()}
