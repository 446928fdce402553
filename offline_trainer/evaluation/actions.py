"""Every action's agreement measured on a stretch of the stream (DESIGN, "Planning").

On consecutive frames of each camera at the stream's rate, from the models' exact outputs:
- `reuse`: a model's own exact output served again a frames later (same camera), a = 1..A
  (`links_tflite.temporal.reuse_curve`): what `run/p` serves between runs;
- `predict`: the ensemble over every subset of the sources linked into a target, through the
  bundle's link files and the agent's ensemble rule (weights, pooling, `min_share`), as the
  agent's profiling windows score them;
- `prior`: the constant predictor the agent serves: the bundle's, or the profiling
  window's stream prior where the agent chose it (`with_priors`).
Measured on the stream's profiling part they are what a plan is fitted with (the agent's
re-profiling windows measure the same); measured on the part a plan is evaluated on, they
give the ceiling: the best expected agreement any plan in the action space reaches there.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from agent.selection import Problem
from links_tflite.agreement import mean_agreement
from links_tflite.bundle import Bundle, Profile
from links_tflite.ensemble import EnsembleRule, combine_outputs, open_link
from links_tflite.prior import prior_outputs
from links_tflite.temporal import reuse_curve

MAX_AGE = 16  # the longest reuse a plan may serve: run/16 (Problem.periods)


@dataclass(frozen=True)
class ActionFigures:
    """Per-action agreements on one stretch of the stream."""

    frames: int
    profile: Profile  # pairwise links and every source subset's ensemble, measured here
    priors: dict[str, float]
    reuse: dict[str, tuple[float, ...]]  # r(1), ..., r(MAX_AGE) per model

    def with_priors(self, priors: Mapping[str, float]) -> ActionFigures:
        """These figures with other constants' figures for some models' `prior`."""
        merged = {**self.priors, **priors}
        return dataclasses.replace(self, priors=merged,
                                   profile=dataclasses.replace(self.profile, priors=merged))

    def problem(self, base: Problem, budget: Mapping[str, float]) -> Problem:
        """`base` (models, measured costs, ensemble rules) with these figures and budget."""
        return dataclasses.replace(base, profile=self.profile, priors=dict(self.priors),
                                   reuse=dict(self.reuse), budget=dict(budget))


def measure_actions(bundle: Bundle, rules: Mapping[str, EnsembleRule],
                    exact: Mapping[str, np.ndarray], cameras: np.ndarray,
                    max_age: int = MAX_AGE) -> ActionFigures:
    """The figures on these rows (stream order; `cameras` the camera of each row). Every
    link runs once over the rows' exact source outputs; each subset's ensemble pools them."""
    models = [m for m in bundle.models if m in exact]
    link_outputs: dict[str, dict[str, np.ndarray]] = {m: {} for m in models}
    for link in bundle.links:
        if link.source in exact and link.target in exact:
            runner = open_link(bundle, link)
            source = np.asarray(exact[link.source], dtype=np.float32)
            link_outputs[link.target][link.source] = np.asarray(runner(source))
    pairwise: dict[str, dict[str, float]] = {}
    ensembles: dict[str, dict[frozenset[str], float]] = {}
    for target in models:
        spec, outputs = bundle.models[target], link_outputs[target]
        pairwise[target] = {s: mean_agreement(spec, v, exact[target]) for s, v in outputs.items()}
        rule = rules[target]
        table = {}
        for size in range(1, len(outputs) + 1):
            for subset in itertools.combinations(sorted(outputs), size):
                pooled = combine_outputs(spec, rule.weights, {s: outputs[s] for s in subset},
                                         rule.pooling, rule.min_share)
                table[frozenset(subset)] = mean_agreement(spec, pooled, exact[target])
        ensembles[target] = table
    priors = {m: mean_agreement(bundle.models[m],
                                prior_outputs(bundle.priors[m].output, len(exact[m])), exact[m])
              for m in models if m in bundle.priors}
    reuse = {m: reuse_curve(bundle.models[m], np.asarray(exact[m]), cameras, max_age)[0]
             for m in models}
    frames = len(cameras)
    return ActionFigures(frames, Profile(pairwise=pairwise, ensembles=ensembles,
                                         held_out_frames=frames, priors=priors),
                         priors, reuse)
