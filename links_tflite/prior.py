"""A target's prior: the constant predictor fit on the training frames of a recording.

It is the floor every link must clear: a link that does not beat its target's prior on
frames it did not train on learns nothing a constant would not give, and is not shipped.
The bundle stores each target's prior (one output, in the model's own format); the agent
can serve it for any target at no cost (`prior_outputs`).

Per kind, the constant is:
- single_label: the class frequencies (their argmax is the majority class);
- multi_label: each label's rate, thresholded at 0.5 (the majority side of every label);
- localization: the most common box, i.e. the training box (or the empty box) with the
  highest mean IoU against the training boxes (a medoid: boxes are continuous);
- regression: the median of each output;
- sequence: the most common sequence.
The agent also fits one on each profiling window's exact outputs (`stream_prior`) and serves
it where it agrees better on the stream than the bundle's.
A regression target also has the range of outputs the model produced on the training
frames: links into it are clamped to that range (`clamp`).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from links_tflite.agreement import iou, mean_agreement
from links_tflite.tasks import TaskSpec

MAX_BOX_CANDIDATES = 256  # training boxes tried as the most common box (sampled beyond)


def fit_prior(spec: TaskSpec, outputs: np.ndarray, seed: int = 0) -> np.ndarray:
    """The constant output (shape: output_width) that best stands for `outputs`."""
    y = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)
    if len(y) == 0:
        raise ValueError("a prior needs at least one frame")
    if spec.kind == "single_label":
        counts = np.bincount(np.argmax(y, axis=1), minlength=spec.dim).astype(np.float64)
        return (counts / counts.sum()).astype(np.float32)
    if spec.kind == "multi_label":
        return (np.mean(y >= 0.5, axis=0) >= 0.5).astype(np.float32)
    if spec.kind == "regression":
        return np.median(y, axis=0).astype(np.float32)
    if spec.kind == "sequence":
        rows = Counter(tuple(np.rint(r).astype(int).tolist()) for r in y)
        return np.asarray(rows.most_common(1)[0][0], dtype=np.float32)
    rng = np.random.default_rng(seed)
    picked = y if len(y) <= MAX_BOX_CANDIDATES else y[
        rng.choice(len(y), MAX_BOX_CANDIDATES, replace=False)]
    candidates = np.concatenate([np.zeros((1, 4)), picked])
    scores = [iou(np.repeat(c[None, :], len(y), axis=0), y).mean() for c in candidates]
    return candidates[int(np.argmax(scores))].astype(np.float32)


def stream_prior(spec: TaskSpec, outputs: np.ndarray) -> tuple[np.ndarray, float]:
    """The constant that stands for a stretch of a stream (`outputs`: a model's exact outputs
    in stream order, at least 2), and what it agrees on frames it was not fit on: each half's
    constant scored on the other half, averaged. A stream is one place at one time of day
    and often stays put where the recording a bundle's prior was fit on spans many; the
    halves are split in time, so a stream that moves within the stretch shows in the figure
    rather than being fit away."""
    y = np.asarray(outputs)
    if len(y) < 2:
        raise ValueError("a stream prior needs at least two frames")
    half = len(y) // 2
    first, second = fit_prior(spec, y[:half]), fit_prior(spec, y[half:])
    figure = (mean_agreement(spec, prior_outputs(first, len(y) - half), y[half:]) * (len(y) - half)
              + mean_agreement(spec, prior_outputs(second, half), y[:half]) * half) / len(y)
    return fit_prior(spec, y), float(figure)


def prior_outputs(prior: np.ndarray, frames: int | None = None) -> np.ndarray:
    """The prior as a target's output: one frame's (frames None), or a batch of `frames`."""
    value = np.asarray(prior, dtype=np.float32)
    if frames is None:
        return value.copy()
    return np.repeat(value[None, :], frames, axis=0)


def output_range(outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per output, the lowest and highest value the model produced."""
    y = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)
    return y.min(axis=0).astype(np.float32), y.max(axis=0).astype(np.float32)


def clamp(values: np.ndarray, bounds: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """`values` (one frame or a batch) within the per-output bounds, where there are any."""
    if bounds is None:
        return values
    return np.clip(values, bounds[0], bounds[1]).astype(np.float32)
