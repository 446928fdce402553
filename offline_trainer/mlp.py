"""The vec2vec link trained in numpy: the same network, loss and optimizer as the Keras one
(`links.build_vec2vec`: Dense(2*out) -> Dropout -> ReLU -> Dense(out), RMSprop, the target
kind's loss), without Keras's graph tracing, which costs a link this small more than its
whole training (about 2 s a link on one core, against tens of milliseconds here). The
weights are then set into the Keras model that is exported, so the files and the float
reference are those of the Keras link.

Early stopping as `links.fit_rows`: every `check_every` passes over the rows, the loss on
the validation rows; training stops once it has not improved by `min_delta` for `patience`
passes, and the best checked weights are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from offline_trainer.workloads.builders import BOX_WEIGHT

RHO, EPSILON = 0.9, 1e-7  # Keras's RMSprop defaults
CLIP = 1e-7  # Keras's epsilon in the cross-entropies


@dataclass
class MLP:
    """Dense(hidden) -> Dropout -> ReLU -> Dense(out): weights as Keras orders them."""

    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray

    @classmethod
    def glorot(cls, inputs: int, hidden: int, outputs: int, rng: np.random.Generator) -> MLP:
        def kernel(fan_in: int, fan_out: int) -> np.ndarray:
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            return rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32)

        return cls(kernel(inputs, hidden), np.zeros(hidden, np.float32),
                   kernel(hidden, outputs), np.zeros(outputs, np.float32))

    def weights(self) -> list[np.ndarray]:
        return [self.w1, self.b1, self.w2, self.b2]

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x @ self.w1 + self.b1, 0.0) @ self.w2 + self.b2


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0)))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def loss_and_gradient(kind: str, z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """The batch-mean loss of the target kind (as `links.LOSS`) and its gradient in the
    logits. Regression targets are standardised by the caller."""
    n, width = z.shape
    if kind == "single_label":
        p = _softmax(z)
        loss = -np.sum(y * np.log(np.clip(p, CLIP, 1.0)), axis=1).mean()
        return float(loss), (p * y.sum(axis=1, keepdims=True) - y) / n
    if kind == "multi_label":
        p = np.clip(_sigmoid(z), CLIP, 1 - CLIP)
        loss = -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()
        return float(loss), (p - y) / (n * width)
    if kind == "regression":
        return float(np.abs(z - y).mean()), np.sign(z - y) / (n * width)
    if kind == "localization":  # presence_box_loss on (presence, box) rows
        p = np.clip(_sigmoid(z), CLIP, 1 - CLIP)
        present = y[:, :1]
        presence = -(present * np.log(p[:, :1]) + (1 - present) * np.log(1 - p[:, :1])).mean()
        error = p[:, 1:] - y[:, 1:]
        box = (present * error ** 2).mean()
        grad = np.empty_like(z)
        grad[:, :1] = (p[:, :1] - present) / n
        grad[:, 1:] = (BOX_WEIGHT * 2.0 * present * error * p[:, 1:] * (1 - p[:, 1:])
                       / (n * (width - 1)))
        return float(presence + BOX_WEIGHT * box), grad
    raise NotImplementedError(f"no numpy loss for a {kind} target")


def train_mlp(kind: str, x: np.ndarray, y: np.ndarray, hidden: int, *, epochs: int,
              batch_size: int, learning_rate: float, dropout: float, seed: int,
              validation: tuple[np.ndarray, np.ndarray] | None = None, patience: int = 8,
              min_delta: float = 1e-3, check_every: int = 1) -> MLP:
    """Fit the MLP with RMSprop on (x, y) for up to `epochs` passes, stopping early on
    `validation` (see the module)."""
    rng = np.random.default_rng(seed)
    x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
    model = MLP.glorot(x.shape[1], hidden, y.shape[1], rng)
    square = [np.zeros_like(w) for w in model.weights()]
    best, best_weights, waited = np.inf, [w.copy() for w in model.weights()], 0
    keep = 1.0 - dropout
    for done in range(1, max(1, epochs) + 1):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch_size):
            rows = order[start:start + batch_size]
            xb = x[rows]
            h = xb @ model.w1 + model.b1
            mask = (rng.random(h.shape) < keep).astype(np.float32) / keep if dropout else 1.0
            active = h * mask > 0
            a = np.where(active, h * mask, 0.0)
            _, dz = loss_and_gradient(kind, a @ model.w2 + model.b2, y[rows])
            dh = (dz @ model.w2.T) * active * mask
            grads = [xb.T @ dh, dh.sum(axis=0), a.T @ dz, dz.sum(axis=0)]
            for w, g, s in zip(model.weights(), grads, square, strict=True):
                s *= RHO
                s += (1 - RHO) * g * g
                w -= learning_rate * g / np.sqrt(s + EPSILON)
        if validation is None or done % check_every:
            continue
        value, _ = loss_and_gradient(kind, model.logits(validation[0]), validation[1])
        if value < best - min_delta:
            best, best_weights, waited = value, [w.copy() for w in model.weights()], 0
        else:
            waited += check_every
            if waited >= patience:
                break
    if validation is not None:
        model = MLP(*best_weights)
    return model
