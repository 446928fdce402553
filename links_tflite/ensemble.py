"""Ensemble inference: predict a target model's output from the activated models' outputs.

h_{A,j} combines the links g_ij from the sources i in the activated set A. One ensemble per
target serves any subset A: its per-source weights (learned by the trainer with random
source dropout, stored in the manifest as method `learned_source_weights`) are renormalised
over the sources present, and the pooling follows the target's kind (`POOLING`):
- single_label: log-linear (a weighted geometric mean of the links' class probabilities,
  renormalised): classes that every present link rules out stay out, which is how two weak
  links can assist each other (parity and shape together narrow a digit down);
- multi_label: the weighted mean of the links' logits, then the sigmoid;
- localization: a weighted vote on whether there is a box (the links' gated boxes, empty
  or not), then the weighted mean of the non-empty boxes (`box_vote`): averaging an empty
  box with a box would halve it; bundles from before it pool boxes with `mean`;
- regression: the weighted mean of the outputs;
- sequence (token ids cannot be averaged): the sequence of the present source with the
  largest weight.
Bundles from before learned weights (method `agreement_weighted_links`) use the profiled
pairwise agreements as the weights and the plain weighted mean.

`combine_outputs` is the one implementation: the trainer's profile measures the ensemble
through it, so the per-subset table describes exactly what ships. `contributing_sources`
says which present sources it reads (the heaviest alone for `heaviest_source`; those with a
positive weight otherwise, all of them where none has one, less those under the ensemble's
`min_share` of the present weight): only their links are loaded, run and charged to the
budget. A zero weight adds nothing, so that changes no prediction; `min_share` (1% from the
trainer, 0 for older bundles) changes it by less than that share, and the profile is measured
with it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from links_tflite.agreement import box_area
from links_tflite.bag import BagDecoding, BagLink
from links_tflite.bundle import Bundle, LinkEntry, Profile
from links_tflite.decoding import SequenceDecoder
from links_tflite.interpreter import TFLiteRunner
from links_tflite.prior import clamp, prior_outputs
from links_tflite.tasks import TaskSpec, activate, link_output

log = logging.getLogger(__name__)

LEARNED = "learned_source_weights"
AGREEMENT_WEIGHTED = "agreement_weighted_links"
POOLING = {
    "single_label": "log_linear",
    "multi_label": "logit_mean",
    "localization": "box_vote",
    "regression": "mean",
    "sequence": "heaviest_source",
}
EPS = 1e-6
# What the trainer writes as an ensemble's `min_share`: a present source with less than 1% of
# the present sources' weight is not read (its link is neither loaded nor run nor charged).
MIN_SHARE = 0.01


@dataclass(frozen=True)
class Prediction:
    value: np.ndarray
    sources: tuple[str, ...]  # the sources whose links it read (contributing_sources)
    est_agreement: float
    present: tuple[str, ...] = ()  # every source present: the profile's key for the figure


class LinkRunner(Protocol):
    def __call__(self, batch: np.ndarray, /) -> np.ndarray: ...

    def run_one(self, example: np.ndarray, /) -> np.ndarray: ...


Bounds = tuple[np.ndarray, np.ndarray]


class VectorLink:
    """A link into a vector target: its file runs to the logits, the host activates (and
    gates a localization link's box, `links_tflite.tasks.link_output`), and clamps a
    regression output to the range the model produced in the recording (`bounds`)."""

    def __init__(self, runner: TFLiteRunner, spec: TaskSpec, bounds: Bounds | None = None) -> None:
        self.runner = runner
        self.spec = spec
        self.bounds = bounds

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return clamp(link_output(self.spec, self.runner(batch)), self.bounds)

    def run_one(self, example: np.ndarray) -> np.ndarray:
        return clamp(link_output(self.spec, self.runner.run_one(example)), self.bounds)


class LastOutput:
    """A link that keeps its last input and output. A link is a pure function, and on a
    stream a source's output often repeats from one frame to the next (a caption's tokens,
    an empty box, a class), so the per-frame path need not run it again: one comparison of
    a few bytes instead of an interpreter call. Batches are not kept."""

    def __init__(self, link: LinkRunner) -> None:
        self.link = link
        self.reused = 0
        self._input = b""
        self._output: np.ndarray | None = None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.link(batch)

    def run_one(self, example: np.ndarray) -> np.ndarray:
        key = np.asarray(example, dtype=np.float32).tobytes()
        if self._output is not None and key == self._input:
            self.reused += 1
            return self._output
        output = np.asarray(self.link.run_one(example))
        output.flags.writeable = False  # handed out again on the next repeat
        self._input, self._output = key, output
        return output


def open_link_files(spec: TaskSpec, file: Path, decoder: Path | None = None,
                    num_threads: int = 1, bounds: Bounds | None = None,
                    bag: BagDecoding | None = None) -> LinkRunner:
    """A link's files as a callable: activated outputs (within `bounds`, where given), or
    token ids for a sequence target (decoded by its decoder file, or read out of a bag
    link's logits by `bag`)."""
    if bag is not None:
        runner = TFLiteRunner(file, num_threads)
        problem = bag.check(spec.vocab_size, int(np.prod(runner.output_shape)))
        if problem:
            raise ValueError(f"{file}: {problem}")
        return BagLink(runner, bag, spec.max_len)
    if spec.kind == "sequence":
        if decoder is None:
            raise ValueError(f"{file}: a link into a sequence target needs its decoder file")
        return SequenceDecoder(file, decoder, spec.max_len, num_threads)
    return VectorLink(TFLiteRunner(file, num_threads), spec, bounds)


def open_link(bundle: Bundle, link: LinkEntry, num_threads: int = 1) -> LinkRunner:
    """A bundle's link, loaded and callable (see open_link_files), clamped to its target's
    recorded range where the bundle has one."""
    spec = bundle.models[link.target]
    decoder = bundle.decoder_path_of(link) if link.decoder else None
    prior = bundle.priors.get(link.target)
    return open_link_files(spec, bundle.path_of(link), decoder, num_threads,
                           prior.bounds if prior is not None else None, link.bag)


def normalised(weights: list[float]) -> np.ndarray:
    """Weights summing to 1 over the sources present; equal where every weight is zero."""
    w = np.asarray(weights, dtype=np.float64)
    return np.full_like(w, 1.0 / len(w)) if w.sum() <= 0 else w / w.sum()


def combine(outputs: list[np.ndarray] | np.ndarray, weights: list[float]) -> np.ndarray:
    """Weighted mean of link outputs (a list, or an array with sources first); equal weights
    where every weight is zero."""
    if len(outputs) == 1:  # the mean of one output, without the stacking
        return np.asarray(outputs[0], dtype=np.float32)
    w = normalised(weights)
    stacked = np.asarray(outputs, dtype=np.float64)
    # what np.tensordot(w, stacked, axes=1) computes, without its per-call shape handling
    mixed = np.dot(w, stacked.reshape(len(w), -1)).reshape(stacked.shape[1:])
    return mixed.astype(np.float32)


def box_vote(outputs: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """Per frame: the box if the sources giving one outweigh those giving the empty box, the
    weighted mean of their boxes; else the empty box (see POOLING)."""
    boxes = np.stack([np.asarray(o, np.float64) for o in outputs])  # sources, [frames,] 4
    w = normalised(weights).reshape((len(outputs),) + (1,) * (boxes.ndim - 2))
    present = (box_area(boxes) > 0).astype(np.float64)  # sources, [frames]
    vote = (w * present).sum(axis=0)
    share = w * present / np.where(vote > 0, vote, 1.0)
    mixed = (share[..., None] * boxes).sum(axis=0)
    return (mixed * (vote >= 0.5)[..., None]).astype(np.float32)


def pool(pooling: str, outputs: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """Combine activated link outputs with weights renormalised over them (see POOLING).
    The outputs are stacked once (sources first), so a frame costs a few array operations
    whatever the number of sources: this runs per frame on the box. `heaviest_source` is
    given the one output it reads (`contributing_sources`)."""
    if pooling == "heaviest_source":
        return np.asarray(outputs[0], dtype=np.float32)
    if pooling == "mean":
        return combine(outputs, weights)
    if pooling == "box_vote":
        return box_vote(outputs, weights)
    stacked = np.asarray(outputs, dtype=np.float64)
    if pooling == "log_linear":
        return activate("softmax", combine(np.log(np.clip(stacked, EPS, None)), weights))
    if pooling == "logit_mean":
        clipped = np.clip(stacked, EPS, 1 - EPS)
        return activate("sigmoid", combine(np.log(clipped / (1 - clipped)), weights))
    raise ValueError(f"unknown pooling {pooling!r}")


def contributing_sources(pooling: str, weights: Mapping[str, float], present: Iterable[str],
                         min_share: float = 0.0) -> list[str]:
    """The present sources whose outputs the pooling reads (see `combine_outputs`), sorted:
    the heaviest for `heaviest_source`; else those with a positive weight (all of them where
    none has one), less those under `min_share` of the present sources' total weight."""
    sources = sorted(present)
    if pooling == "heaviest_source":
        return [max(sources, key=lambda s: (weights.get(s, 0.0), s))] if sources else []
    weighted = [s for s in sources if weights.get(s, 0.0) > 0]
    if not weighted:
        return sources  # where no weight is positive, `normalised` weighs all equally
    floor = min_share * sum(weights[s] for s in weighted)
    return [s for s in weighted if weights[s] >= floor] or [
        max(weighted, key=lambda s: (weights[s], s))]


def combine_outputs(spec: TaskSpec, weights: Mapping[str, float],
                    outputs: Mapping[str, np.ndarray], pooling: str = "",
                    min_share: float = 0.0) -> np.ndarray:
    """The ensemble over the sources present in `outputs` (batch or single frame), reading
    those `contributing_sources` names: with `min_share` 0 the same as pooling them all, since
    a zero weight adds nothing."""
    if not outputs:
        raise ValueError("an ensemble needs at least one source output")
    pooling = pooling or POOLING[spec.kind]
    reads = contributing_sources(pooling, weights, outputs, min_share)
    return pool(pooling, [outputs[s] for s in reads], [weights.get(s, 0.0) for s in reads])


@dataclass(frozen=True)
class EnsembleRule:
    """A target's ensemble as the selection and the box see it: per-source weights, the
    pooling, and the share of the present weight under which a source is not read."""

    weights: Mapping[str, float]
    pooling: str
    min_share: float = 0.0

    def reads(self, present: Iterable[str]) -> list[str]:
        """The present sources whose links it reads (`contributing_sources`)."""
        return contributing_sources(self.pooling, self.weights, present, self.min_share)


@dataclass(frozen=True)
class Reading:
    """What a target's ensemble reads for one set of present sources."""

    links: tuple[tuple[str, LinkRunner], ...]  # (source, its loaded link), contributing only
    present: tuple[str, ...]  # every present source with a link into the target
    weights: list[float]  # the contributing sources' weights, in `links` order


@dataclass(frozen=True)
class Plan:
    """One target's ensemble for the current activated set."""

    loaded: dict[str, LinkEntry]  # source -> its loaded link
    sources: frozenset[str]  # every source with a link into the target
    rule: EnsembleRule
    readings: dict[frozenset[str], Reading] = field(default_factory=dict)  # by present set


class EnsemblePredictor:
    """Holds the links needed for one activated set and runs the ensembles."""

    def __init__(self, bundle: Bundle, num_threads: int = 1) -> None:
        self.bundle = bundle
        self.num_threads = num_threads
        self._runners: dict[str, LastOutput] = {}
        self._active: frozenset[str] = frozenset()
        self._plans: dict[str, Plan] = {}

    def weights(self, target: str) -> tuple[dict[str, float], str]:
        """The target's per-source weights and pooling: learned where the bundle has them."""
        entry = self.bundle.ensembles.get(target)
        if entry is not None and entry.method == LEARNED:
            return dict(entry.weights), entry.pooling
        profile = self.bundle.profile
        pooling = "heaviest_source" if self.bundle.models[target].kind == "sequence" else "mean"
        return {link.source: profile.link_agreement(link.source, target)
                for link in self.bundle.links_into(target)}, pooling

    def min_share(self, target: str) -> float:
        """Under this share of the present sources' weight a source is not read (0: all)."""
        entry = self.bundle.ensembles.get(target)
        return entry.min_share if entry is not None and entry.method == LEARNED else 0.0

    def rule(self, target: str) -> EnsembleRule:
        return EnsembleRule(*self.weights(target), self.min_share(target))

    def needed_links(self, active: Iterable[str], targets: Iterable[str]) -> list[LinkEntry]:
        """The links from the activated sources that each target's ensemble reads."""
        active_set = set(active)
        needed = []
        for target in targets:
            links = {link.source: link for link in self.bundle.links_into(target)
                     if link.source in active_set}
            needed += [links[s] for s in self.rule(target).reads(links)]
        return needed

    def prepare(self, active: Iterable[str], targets: Iterable[str]) -> None:
        """Load exactly the links from the activated sources into the predicted targets."""
        self._active = frozenset(active)
        wanted = {link.name: link for link in self.needed_links(self._active, targets)}
        for name in list(self._runners):
            if name not in wanted:
                del self._runners[name]
        for name, link in wanted.items():
            if name not in self._runners:
                self._runners[name] = LastOutput(open_link(self.bundle, link,
                                                           self.num_threads))
        self._plans = {}
        log.debug("ensemble links loaded: %s", sorted(self._runners))

    def runner(self, link: LinkEntry) -> LinkRunner:
        return self._runners[link.name]

    def _plan(self, target: str) -> Plan:
        """The target's loaded links, weights and pooling: looked up once per selection,
        not per frame."""
        if target not in self._plans:
            links = self.bundle.links_into(target)
            self._plans[target] = Plan(
                {link.source: link for link in links if link.name in self._runners},
                frozenset(link.source for link in links), self.rule(target))
        return self._plans[target]

    def _reading(self, target: str, plan: Plan, present: frozenset[str]) -> Reading:
        """The links to run for these present sources: worked out once per set, since the
        same sources are present frame after frame."""
        if present not in plan.readings:
            loaded = {s: link for s, link in plan.loaded.items() if s in present}
            if not loaded:
                raise LookupError(f"no loaded link predicts {target!r} from {sorted(present)}")
            reads = plan.rule.reads(loaded)
            plan.readings[present] = Reading(
                tuple((s, self._runners[loaded[s].name]) for s in reads),
                tuple(sorted(plan.sources.intersection(present))),
                [plan.rule.weights.get(s, 0.0) for s in reads])
        return plan.readings[present]

    def prior(self, target: str, profile: Profile | None = None) -> Prediction:
        """The target's prior (its constant predictor): no link read, no cost; its figure is
        the prior's held-out agreement. LookupError where the bundle has none (older)."""
        prior = self.bundle.priors.get(target)
        if prior is None:
            raise LookupError(f"the bundle has no prior for {target!r}")
        figure = (profile or self.bundle.profile).priors.get(target, 0.0)
        return Prediction(value=prior_outputs(prior.output), sources=(), est_agreement=figure)

    def predict(self, target: str, outputs: Mapping[str, np.ndarray],
                profile: Profile | None = None) -> Prediction:
        """Predict `target` from the outputs of whichever activated sources are present; its
        figure from `profile` (the agent's, online where measured), else the bundle's."""
        plan = self._plan(target)
        reading = self._reading(target, plan, frozenset(outputs))
        link_outputs = [runner.run_one(outputs[s]) for s, runner in reading.links]
        return Prediction(
            value=pool(plan.rule.pooling, link_outputs, reading.weights),
            sources=tuple(s for s, _ in reading.links),
            est_agreement=(profile or self.bundle.profile).ensemble_agreement(
                target, frozenset(reading.present)),
            present=reading.present,
        )
