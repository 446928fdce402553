"""The numpy vec2vec trainer: its gradients are those of the Keras losses, and it learns."""

from __future__ import annotations

import numpy as np
import pytest

from offline_trainer.mlp import MLP, loss_and_gradient, train_mlp


def targets(kind: str, rng: np.random.Generator, n: int, width: int) -> np.ndarray:
    if kind == "single_label":
        return rng.dirichlet(np.ones(width), n)
    if kind == "multi_label":
        return (rng.random((n, width)) < 0.4).astype(np.float64)
    if kind == "localization":
        present = (rng.random((n, 1)) < 0.7).astype(np.float64)
        return np.concatenate([present, rng.random((n, width - 1)) * present], axis=1)
    return rng.normal(size=(n, width))


@pytest.mark.parametrize("kind", ["single_label", "multi_label", "localization", "regression"])
def test_gradients_match_finite_differences(kind: str) -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(size=(6, 5))
    y = targets(kind, rng, 6, 5)
    _, grad = loss_and_gradient(kind, z, y)
    step = 1e-6
    for i, j in [(0, 0), (2, 1), (5, 4), (3, 3)]:
        bumped = z.copy()
        bumped[i, j] += step
        lowered = z.copy()
        lowered[i, j] -= step
        numeric = (loss_and_gradient(kind, bumped, y)[0]
                   - loss_and_gradient(kind, lowered, y)[0]) / (2 * step)
        assert grad[i, j] == pytest.approx(numeric, rel=1e-3, abs=1e-6), (kind, i, j)


def test_it_learns_a_bent_relation() -> None:
    """Parity of a digit from its noisy one-hot through 4 hidden units, learnt on 200 rows
    with early stopping on 50 others, right on rows it never saw."""
    rng = np.random.default_rng(0)
    digits = rng.integers(0, 10, 300)
    x = np.eye(10, dtype=np.float32)[digits] + rng.normal(0, 0.05, (300, 10)).astype(np.float32)
    y = np.eye(2, dtype=np.float32)[digits % 2]
    model = train_mlp("single_label", x[:200], y[:200], 4, epochs=300, batch_size=32,
                      learning_rate=3e-3, dropout=0.1, seed=0,
                      validation=(x[200:250], y[200:250]))
    assert isinstance(model, MLP)
    predicted = model.logits(x[250:]).argmax(axis=1)
    assert np.mean(predicted == digits[250:] % 2) >= 0.95
