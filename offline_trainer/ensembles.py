"""Subset-aware ensembles: one per target, trained once, serving any set of active sources.

The ensemble h_j is a weight per source, renormalised over the sources present, pooled as
the target's kind says (`links_tflite.ensemble.combine_outputs` and `POOLING`). For a vector
target the weights are learned by gradient descent on the links' outputs (from their
exported files, as shipped) through the same pooling, with random source dropout: every step
draws, per frame, a random non-empty subset of sources, so the weights are fit for all the
subsets a scheduler may activate, not just the full set. The loss follows the target's kind
(cross-entropy for labels, squared error for boxes and numbers).
A sequence target cannot average token ids: its weight per source is that link's agreement
on the fitting frames, and the ensemble takes the present source with the largest weight.

The fitting frames are the calibration frames: training frames the links did not train on
(`train_links.calibration_split`). On the links' own training frames an overfit link looks
best and takes the weight. `calibrated_weights` then checks the learned weights on those
frames for every subset: where some subset's ensemble falls more than `SUBSET_SLACK` below
its best single link, it moves the weight towards the best links (by calibration agreement),
down to "the best present link alone", which never falls below it.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Mapping

import numpy as np

from links_tflite.agreement import mean_agreement
from links_tflite.ensemble import EPS, POOLING
from links_tflite.tasks import TaskSpec

log = logging.getLogger(__name__)

MAX_ENUMERATED_SOURCES = 11  # all subsets while k <= 12 models (k - 1 sources per target)
SAMPLED_SUBSETS = 256


def _loss(kind: str, predicted: object, exact: object) -> object:
    import tensorflow as tf

    eps = 1e-6
    if kind == "single_label":
        return -tf.reduce_mean(tf.reduce_sum(exact * tf.math.log(predicted + eps), axis=-1))
    if kind == "multi_label":
        p = tf.clip_by_value(predicted, eps, 1 - eps)
        return -tf.reduce_mean(exact * tf.math.log(p) + (1 - exact) * tf.math.log(1 - p))
    return tf.reduce_mean(tf.square(predicted - exact))


def random_masks(rng: np.random.Generator, frames: int, sources: int,
                 keep: float = 0.5) -> np.ndarray:
    """(frames, sources) 0/1 masks, each row keeping each source with probability `keep`
    and at least one source."""
    masks = (rng.random((frames, sources)) < keep).astype(np.float32)
    empty = masks.sum(axis=1) == 0
    masks[empty, rng.integers(0, sources, int(empty.sum()))] = 1.0
    return masks


def fit_source_weights(spec: TaskSpec, outputs: Mapping[str, np.ndarray], exact: np.ndarray,
                       seed: int = 0, steps: int = 300,
                       learning_rate: float = 0.1) -> dict[str, float]:
    """Per-source weights (summing to 1) for one target, from the links' outputs on frames."""
    sources = sorted(outputs)
    if not sources:
        return {}
    if POOLING[spec.kind] in ("heaviest_source", "box_vote") or len(sources) == 1:
        # not a differentiable mix: weights proportional to each link's agreement
        scores = {s: mean_agreement(spec, outputs[s], exact) for s in sources}
        total = sum(scores.values()) or 1.0
        return {s: float(v / total) for s, v in scores.items()}
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    pooling = POOLING[spec.kind]
    stacked = np.stack([outputs[s] for s in sources], axis=1).astype(np.float64)  # N, S, D
    if pooling == "log_linear":
        stacked = np.log(np.clip(stacked, EPS, None))
    elif pooling == "logit_mean":
        stacked = np.clip(stacked, EPS, 1 - EPS)
        stacked = np.log(stacked / (1 - stacked))
    stacked = tf.constant(stacked, tf.float32)
    target = tf.constant(exact, tf.float32)
    theta = tf.Variable(tf.zeros(len(sources)))
    optimizer = tf.keras.optimizers.Adam(learning_rate)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        masks = tf.constant(random_masks(rng, len(exact), len(sources)))
        with tf.GradientTape() as tape:
            weights = tf.exp(theta)[None, :] * masks
            weights = weights / tf.reduce_sum(weights, axis=1, keepdims=True)
            mixed = tf.reduce_sum(weights[:, :, None] * stacked, axis=1)
            if pooling == "log_linear":
                mixed = tf.nn.softmax(mixed, axis=-1)
            elif pooling == "logit_mean":
                mixed = tf.sigmoid(mixed)
            loss = _loss(spec.kind, mixed, target)
        optimizer.apply_gradients([(tape.gradient(loss, theta), theta)])
    weights = np.exp(theta.numpy().astype(np.float64))
    weights /= weights.sum()
    log.debug("ensemble weights: %s", dict(zip(sources, weights.round(3), strict=True)))
    return {s: float(w) for s, w in zip(sources, weights, strict=True)}


SUBSET_SLACK = 0.005  # an ensemble may lose half a point to the best link of its subset
RANK_SHARPNESS = (0.5, 1.0, 2.0, 4.0)  # decades of weight between successive ranks


def ranked_weights(scores: Mapping[str, float], decades: float) -> dict[str, float]:
    """Weights falling by 10**decades from one source to the next by score (best first)."""
    order = sorted(scores, key=lambda s: (-scores[s], s))
    raw = {s: 10.0 ** (-decades * rank) for rank, s in enumerate(order)}
    total = sum(raw.values())
    return {s: w / total for s, w in raw.items()}


def subset_deficits(spec: TaskSpec, weights: Mapping[str, float],
                    outputs: Mapping[str, np.ndarray], exact: np.ndarray,
                    singles: Mapping[str, float], subsets: list[frozenset[str]],
                    min_share: float) -> tuple[float, float]:
    """(mean agreement over the subsets, worst shortfall of a subset's ensemble below its
    best single link) of `weights` on these frames, pooled as shipped."""
    from links_tflite.ensemble import combine_outputs

    values, worst = [], 0.0
    for subset in subsets:
        value = mean_agreement(spec, combine_outputs(spec, weights,
                                                     {s: outputs[s] for s in subset},
                                                     min_share=min_share), exact)
        values.append(value)
        worst = max(worst, max(singles[s] for s in subset) - value)
    return float(np.mean(values)), worst


def calibrated_weights(spec: TaskSpec, outputs: Mapping[str, np.ndarray], exact: np.ndarray,
                       seed: int = 0, min_share: float = 0.0,
                       slack: float = SUBSET_SLACK) -> dict[str, float]:
    """Weights fit on calibration frames (`fit_source_weights`), then checked there on every
    (profiled) subset: among the learned weights, the learned weights times rank weights of
    growing sharpness, and the rank weights alone, the best on average of those whose every
    subset is within `slack` of its best single link (else the one closest to that)."""
    learned = fit_source_weights(spec, outputs, exact, seed=seed)
    if len(learned) < 2 or POOLING[spec.kind] == "heaviest_source":
        return learned
    singles = {s: mean_agreement(spec, outputs[s], exact) for s in outputs}
    subsets, _ = profiled_subsets(sorted(outputs), seed)
    candidates = [learned]
    for decades in RANK_SHARPNESS:
        ranked = ranked_weights(singles, decades)
        mixed = {s: learned[s] * ranked[s] for s in learned}
        total = sum(mixed.values()) or 1.0
        candidates += [{s: w / total for s, w in mixed.items()}, ranked]
    scored = [(subset_deficits(spec, w, outputs, exact, singles, subsets, min_share), i)
              for i, w in enumerate(candidates)]
    within = [(mean, -i) for (mean, worst), i in scored if worst <= slack]
    closest = min(scored, key=lambda item: (item[0][1], item[1]))[1]
    chosen = -max(within)[1] if within else closest
    if chosen:
        log.debug("ensemble weights sharpened (candidate %d): %s", chosen, candidates[chosen])
    return candidates[chosen]


def profiled_subsets(sources: list[str], seed: int = 0,
                     limit: int = MAX_ENUMERATED_SOURCES,
                     sampled: int = SAMPLED_SUBSETS) -> tuple[list[frozenset[str]], bool]:
    """Every non-empty subset of `sources` when there are at most `limit`; beyond, every
    single source, the full set and `sampled` random subsets. Returns (subsets, was_sampled)."""
    if len(sources) <= limit:
        return [frozenset(c) for size in range(1, len(sources) + 1)
                for c in itertools.combinations(sorted(sources), size)], False
    rng = np.random.default_rng(seed)
    chosen = {frozenset([s]) for s in sources} | {frozenset(sources)}
    while len(chosen) < len(sources) + 1 + sampled:
        mask = random_masks(rng, 1, len(sources))[0].astype(bool)
        chosen.add(frozenset(s for s, keep in zip(sorted(sources), mask, strict=True) if keep))
    return sorted(chosen, key=lambda s: (len(s), sorted(s))), True


def subset_case(agreement: float, best_single: float, size: int, tolerance: float = 0.005) -> str:
    """The paper's cases: one link dominates, or the links assist each other."""
    if size == 1:
        return "single"
    if agreement > best_single + tolerance:
        return "mutual_assistance"
    if agreement >= best_single - tolerance:
        return "dominance"
    return "worse_than_best_single"
