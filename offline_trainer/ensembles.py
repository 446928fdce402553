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
best and takes the weight. `calibrated_weights` then ranks the links (on the calibration
frames where they can tell two links apart, else by their agreement over all training
frames) and keeps a mixture of links only where, on the calibration frames, no subset's
ensemble falls more than `SUBSET_SLACK` below its best single link and the mixture beats the
best link alone by more than one standard error; otherwise the best link serves alone
(a sequence target always reads one: the best ranked present source).
"""

from __future__ import annotations

import functools
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
# A mixture of links must beat the best link alone, and one link another, by this many
# standard errors of the mean per-frame gain on the calibration frames to be told apart.
TIE_STANDARD_ERRORS = 1.0
RANK_SHARPNESS = (0.5, 1.0, 2.0, 4.0)  # decades of weight between successive ranks


def ranked_weights(scores: Mapping[str, float], decades: float) -> dict[str, float]:
    """Weights falling by 10**decades from one source to the next by score (best first)."""
    order = sorted(scores, key=lambda s: (-scores[s], s))
    raw = {s: 10.0 ** (-decades * rank) for rank, s in enumerate(order)}
    total = sum(raw.values())
    return {s: w / total for s, w in raw.items()}


def link_order(calibration: Mapping[str, np.ndarray],
               fitting: Mapping[str, np.ndarray] | None = None,
               standard_errors: float = TIE_STANDARD_ERRORS) -> list[str]:
    """The sources best first, from their links' per-frame agreement on the calibration
    frames: one link goes before another where its mean gain over it there (paired, frame by
    frame) is more than `standard_errors` standard errors of that mean; where the calibration
    frames cannot tell the two apart, by their agreement over the fitting and calibration
    frames together (`fitting`: per-frame agreement on the frames the links fit on, an
    optimistic figure but from more frames); then by name."""
    def overall(source: str) -> float:
        scores = calibration[source]
        if fitting is not None and source in fitting:
            scores = np.concatenate([fitting[source], scores])
        return float(scores.mean()) if len(scores) else 0.0

    def compare(a: str, b: str) -> int:
        gain = np.asarray(calibration[a], np.float64) - calibration[b]
        spread = float(gain.std(ddof=1) / np.sqrt(len(gain))) if len(gain) > 1 else np.inf
        if len(gain) and abs(float(gain.mean())) > standard_errors * spread:
            return -1 if gain.mean() > 0 else 1
        first, second = overall(a), overall(b)
        if first != second:
            return -1 if first > second else 1
        return -1 if a < b else 1 if a > b else 0

    return sorted(calibration, key=functools.cmp_to_key(compare))


def weight_candidates(learned: dict[str, float], rank: dict[str, float]
                      ) -> list[dict[str, float]]:
    """The weights an ensemble rule chooses among: the learned ones, then for each
    `RANK_SHARPNESS` the learned times the rank weights (normalised) and the rank weights
    alone; the last is the sharpest ranking (the best link alone, in effect)."""
    candidates = [learned]
    for decades in RANK_SHARPNESS:
        ranked = ranked_weights(rank, decades)
        mixed = {s: learned[s] * ranked[s] for s in learned}
        total = sum(mixed.values()) or 1.0
        candidates += [{s: w / total for s, w in mixed.items()}, ranked]
    return candidates


def calibrated_weights(spec: TaskSpec, outputs: Mapping[str, np.ndarray], exact: np.ndarray,
                       seed: int = 0, min_share: float = 0.0, slack: float = SUBSET_SLACK,
                       fitting: Mapping[str, np.ndarray] | None = None) -> dict[str, float]:
    """Weights for one target from its links' outputs on the calibration frames (`exact`:
    the target's outputs there; `fitting`: each link's per-frame agreement on the frames it
    fit on, which breaks the calibration frames' ties, `link_order`).

    The links are ranked (`link_order`); the candidates are the learned weights
    (`fit_source_weights`), the learned weights times rank weights of growing sharpness and
    the rank weights alone, the sharpest of which is the best link alone (the others under
    `min_share`). A candidate that mixes links is kept only where, on the calibration frames,
    every profiled subset's ensemble is within `slack` of its best single link and its gain
    over the best link alone (per frame, averaged over the subsets) is more than
    `TIE_STANDARD_ERRORS` standard errors: where the calibration frames cannot tell the
    mixture from the best link, the best link serves. A sequence target (one present source
    read) gets the rank weights."""
    sources = sorted(outputs)
    if len(sources) < 2:
        return fit_source_weights(spec, outputs, exact, seed=seed)
    from links_tflite.agreement import agreement

    per_frame = {s: agreement(spec, outputs[s], exact) for s in sources}
    order = link_order(per_frame, fitting)
    rank = {s: float(len(order) - i) for i, s in enumerate(order)}
    if POOLING[spec.kind] == "heaviest_source":
        return ranked_weights(rank, 1.0)
    candidates = weight_candidates(fit_source_weights(spec, outputs, exact, seed=seed), rank)
    subsets, _ = profiled_subsets(sources, seed)
    best_single = np.array([max(float(per_frame[s].mean()) for s in subset)
                            for subset in subsets])
    scored = [subset_scores(spec, w, outputs, exact, subsets, min_share) for w in candidates]
    alone = scored[-1]
    kept = []
    for i, frames in enumerate(scored[:-1]):
        worst = float((best_single - frames.mean(axis=1)).max())
        gain = (frames - alone).mean(axis=0)
        spread = float(gain.std(ddof=1) / np.sqrt(len(gain))) if len(gain) > 1 else np.inf
        if worst <= slack and float(gain.mean()) > TIE_STANDARD_ERRORS * spread:
            kept.append((float(gain.mean()), -i))
    chosen = -max(kept)[1] if kept else len(candidates) - 1
    log.debug("ensemble weights (candidate %d of %d): %s", chosen, len(candidates),
              candidates[chosen])
    return candidates[chosen]


def subset_scores(spec: TaskSpec, weights: Mapping[str, float],
                  outputs: Mapping[str, np.ndarray], exact: np.ndarray,
                  subsets: list[frozenset[str]], min_share: float) -> np.ndarray:
    """(subsets, frames): the per-frame agreement of each subset's ensemble, pooled as
    shipped."""
    from links_tflite.agreement import agreement
    from links_tflite.ensemble import combine_outputs

    return np.stack([agreement(spec, combine_outputs(spec, weights,
                                                     {s: outputs[s] for s in subset},
                                                     min_share=min_share), exact)
                     for subset in subsets])


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
