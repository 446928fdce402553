"""A cheap probe: can a link from this source beat the target's prior at all?

Before a link is trained, a ridge regression (closed form, numpy, milliseconds) on the
source's outputs (a sequence source: its bag of tokens) and random ReLU features of them maps
them to what the link would learn, and is scored on the calibration frames against the
target's prior. Where it does not beat the prior, the link is skipped: training it costs
seconds and it would be dropped anyway. The probe is a fixed random layer and a linear
read-out, so it is only trusted where such a read-out is a fair test: label and box targets
(regression targets are scored within a tolerance, where a least-squares fit of a skewed
output misleads; sequence targets need a decoder), and on at least `MIN_CHECK_FRAMES`
calibration frames.
"""

from __future__ import annotations

import numpy as np

from links_tflite.agreement import agreement
from links_tflite.tasks import TaskSpec, gate_box
from offline_trainer.workloads.builders import presence_box_targets

PROBED_KINDS = frozenset({"single_label", "multi_label", "localization"})
MIN_CHECK_FRAMES = 50  # on fewer calibration frames the probe's verdict is luck: no probe
RIDGE = 1e-2
RANDOM_UNITS = 128  # random ReLU features beside the inputs: a read-out that can bend


def inputs(source: TaskSpec, x: np.ndarray) -> np.ndarray:
    """The source's outputs as numbers: a sequence's token counts (PAD left out)."""
    x = np.asarray(x, dtype=np.float64)
    if source.kind == "sequence":
        tokens = np.rint(x).astype(np.int64).clip(0, source.vocab_size - 1)
        counts = np.zeros((len(x), source.vocab_size))
        np.add.at(counts, (np.arange(len(x))[:, None], tokens), 1.0)
        x = counts[:, 1:]
    return x


class Features:
    """Standardised inputs, random ReLU features of them (seeded) and a bias."""

    def __init__(self, fit: np.ndarray, seed: int = 0) -> None:
        self.mean, self.std = fit.mean(axis=0), fit.std(axis=0) + 1e-6
        rng = np.random.default_rng(seed)
        self.weights = rng.normal(0.0, 1.0 / np.sqrt(fit.shape[1]), (fit.shape[1], RANDOM_UNITS))
        self.bias = rng.normal(0.0, 1.0, RANDOM_UNITS)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        z = (x - self.mean) / self.std
        hidden = np.maximum(z @ self.weights + self.bias, 0.0)
        return np.concatenate([z, hidden, np.ones((len(x), 1))], axis=1)


def probe_scores(source: TaskSpec, target: TaskSpec, x_fit: np.ndarray, y_fit: np.ndarray,
                 x_check: np.ndarray, y_check: np.ndarray,
                 minimum: int = MIN_CHECK_FRAMES) -> np.ndarray | None:
    """Per-frame agreement of a ridge read-out fit on (x_fit, y_fit), on the check frames;
    None where the probe is not trusted: for the target's kind, or on fewer than `minimum`
    check frames."""
    if target.kind not in PROBED_KINDS or len(x_check) < minimum:
        return None
    features = Features(inputs(source, x_fit))
    fit = features(inputs(source, x_fit))
    wanted = (presence_box_targets(y_fit) if target.kind == "localization"
              else np.asarray(y_fit, dtype=np.float64))
    gram = fit.T @ fit + RIDGE * len(fit) * np.eye(fit.shape[1])
    weights = np.linalg.solve(gram, fit.T @ wanted)
    predicted = features(inputs(source, x_check)) @ weights
    if target.kind == "localization":
        predicted = gate_box(np.clip(predicted, 0.0, 1.0))
    return agreement(target, predicted, y_check)
