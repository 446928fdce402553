"""Per-model publishing rules (`[publish.per_model.<id>]`): which of a frame's outputs go into
its message, applied once per frame before the message is made (agent.scheduler).

`PublishRules(settings, clock)` keeps, per camera and model, when an output was last
published and what it said; `apply(outputs, specs, camera)` returns the outputs to publish:

- `min_agreement`: a predicted or prior output whose `est_agreement` is below it is returned
  with `withheld = "low agreement"` (the message carries it with `value: null`) under
  `below_min_agreement = "withhold"`, or left out under `"drop"`. An executed output is never
  withheld.
- `min_interval_s`: at most one output of the model (per camera) per that many seconds of the
  clock; the others are left out (`too_soon`).
- `on_change`: an output is published only when it differs from the last one published (per
  camera) by more than `change_tolerance` (`unchanged` otherwise); the first is always
  published. What changes, per task kind: single_label, the class (argmax); multi_label, any
  label flipping at 0.5; sequence, the tokens (up to the first 0); regression and
  localization, the largest absolute difference of a number. The tolerance applies to the
  last two; a withheld output differs from a published value and equals a withheld one.

Rules run in that order, so an output left out by one is counted once, under that rule.
Nothing is lost silently: every output withheld or left out is counted per model and reason
(`counts()`, the status's `publishing` section, and their totals in `counters`). Models
without rules (the default) pass through untouched, at no cost. Pure apart from its memory of
what it published: no I/O; the clock is given (`time.monotonic` by default).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from agent.config import ModelPublishConfig, PublishConfig
from agent.output import Output
from links_tflite.tasks import TaskSpec

LOW_AGREEMENT = "low agreement"
REASONS = ("withheld", "dropped", "too_soon", "unchanged")
_WITHHELD = object()  # what a withheld output "said", for on_change


def change_key(spec: TaskSpec, value: np.ndarray) -> Any:
    """What on_change compares of an output: a class (int), the labels on or the tokens (a
    tuple of ints), or the numbers (a list of floats, a copy: the runtime may reuse the
    output's buffer). Plain Python: outputs are a few numbers, where numpy's calls cost more
    than the work."""
    values = np.asarray(value).reshape(-1).tolist()
    if spec.kind == "single_label":
        return max(range(len(values)), key=values.__getitem__)
    if spec.kind == "multi_label":
        return tuple(i for i, v in enumerate(values) if v >= 0.5)
    if spec.kind == "sequence":
        tokens = [round(v) if math.isfinite(v) else 0 for v in values]
        return tuple(tokens[: tokens.index(0)] if 0 in tokens else tokens)
    return values


def changed(before: Any, after: Any, tolerance: float) -> bool:
    """Whether `after` differs from `before` (both `change_key`s, or withheld) by more than
    `tolerance` (numbers only; classes, labels and tokens either differ or not). A NaN is a
    change."""
    if before is _WITHHELD or after is _WITHHELD:
        return before is not after
    if isinstance(after, list):
        if not isinstance(before, list) or len(before) != len(after):
            return True
        return any(not abs(a - b) <= tolerance for a, b in zip(after, before, strict=True))
    return bool(before != after)


class PublishRules:
    """Filters a frame's outputs by the `[publish.per_model]` rules in force (`settings`,
    replaced when the config changes; what was published is remembered across a change)."""

    def __init__(self, settings: PublishConfig,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self._last: dict[tuple[int, str], tuple[float, Any]] = {}  # (camera, model)
        self._counts: dict[str, dict[str, int]] = {reason: {} for reason in REASONS}

    def apply(self, outputs: Sequence[Output], specs: Mapping[str, TaskSpec],
              camera: int = 0) -> list[Output]:
        """The outputs of one frame of `camera` to publish, in their order."""
        rules = self.settings.per_model
        if not rules:
            return list(outputs)
        now = self.clock()
        kept = []
        for output in outputs:
            rule = rules.get(output.model)
            if rule is None:
                kept.append(output)
                continue
            decided = self._decide(output, rule, specs[output.model], camera, now)
            if decided is not None:
                kept.append(decided)
        return kept

    def _decide(self, output: Output, rule: ModelPublishConfig, spec: TaskSpec, camera: int,
                now: float) -> Output | None:
        if not output.executed and output.est_agreement < rule.min_agreement:
            if rule.below_min_agreement == "drop":
                self._count("dropped", output)
                return None
            output = replace(output, withheld=LOW_AGREEMENT)
        if (rule.min_interval_s or rule.on_change) and not self._due(output, rule, spec,
                                                                     camera, now):
            return None
        if output.withheld:
            self._count("withheld", output)
        return output

    def _due(self, output: Output, rule: ModelPublishConfig, spec: TaskSpec, camera: int,
             now: float) -> bool:
        """Whether min_interval_s and on_change let the output out (counted if not)."""
        key = (camera, output.model)
        last = self._last.get(key)
        if last is not None and rule.min_interval_s and now - last[0] < rule.min_interval_s:
            self._count("too_soon", output)
            return False
        said = _WITHHELD if output.withheld else change_key(spec, output.value)
        if last is not None and rule.on_change and not changed(
                last[1], said, rule.change_tolerance):
            self._count("unchanged", output)
            return False
        self._last[key] = (now, said)
        return True

    def _count(self, reason: str, output: Output) -> None:
        by_model = self._counts[reason]
        by_model[output.model] = by_model.get(output.model, 0) + 1

    def counts(self) -> dict[str, dict[str, int]]:
        """Outputs withheld (published with no value) or left out, by reason and model: the
        status's `publishing` section. `withheld` and `dropped`: below `min_agreement`;
        `too_soon`: within `min_interval_s`; `unchanged`: `on_change`."""
        return {reason: dict(by_model) for reason, by_model in self._counts.items()}
