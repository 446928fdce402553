"""Bag-of-tokens links into a sequence target (`links_tflite.bag`): the cheap path.

The link predicts which of the target's tokens a frame holds (one sigmoid per token seen on
at least `MIN_TOKEN_ROWS` fitting frames) and the host emits those at or above a threshold
in the order the tokens typically take in the target. It is trained in numpy
(`offline_trainer.mlp`, the multi-label loss, early stopping on the calibration frames) on:
- a vector source: its output (`vec2bag`: Dense(units) -> ReLU -> Dense(tokens));
- a sequence source: how many of its `max_len` positions hold each source token, PAD
  included (`seq2bag`). Exported as Embedding(source vocabulary, units) -> mean over
  positions -> ReLU -> Dense(tokens): the mean of per-position embeddings of
  (`max_len` x first layer row + bias) is exactly the first layer applied to those counts,
  so the file computes the trained network from the token ids, and converts to int8 like
  the seq2vec links.
The threshold is picked on the fitting frames (from `THRESHOLDS`), so the calibration frames
stay an honest check of the link against its prior and against the decoder.

`ordered_oracle_scores` is what a perfect ordering of the bag's tokens would score: where even
that does not beat the prior, a decoder (which must find the same tokens, then order them)
is not worth training on a large vocabulary (`train_links`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from links_tflite.agreement import strip_padding
from links_tflite.bag import BagDecoding, decode_bag, token_presence, typical_order
from links_tflite.tasks import TaskSpec
from offline_trainer.links import ExportPart, LinkTraining, TrainedLink
from offline_trainer.mlp import MLP, train_mlp

MIN_TOKEN_ROWS = 2  # a token held by fewer fitting frames is never emitted
THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6)
BAG_UNITS = 64
# Rows per step: a bag link's output layer is as wide as the tokens it can emit (thousands),
# so it learns from larger batches at the sequence links' learning rate, in fewer steps.
BAG_BATCH = 128


def source_counts(source: TaskSpec, x: np.ndarray) -> np.ndarray:
    """A bag link's input: a vector source's output, or for a sequence source how many of
    its positions hold each token id (PAD included)."""
    if source.kind != "sequence":
        return np.asarray(x, np.float32)
    ids = np.rint(np.asarray(x, np.float64)).astype(np.int64).clip(0, source.vocab_size - 1)
    counts = np.zeros((len(ids), source.vocab_size), np.float32)
    np.add.at(counts, (np.repeat(np.arange(len(ids)), ids.shape[1]), ids.reshape(-1)), 1.0)
    return counts


def bag_keras_model(source: TaskSpec, mlp: MLP) -> Any:
    """The trained network as the Keras model that is exported (up to the logits)."""
    import keras

    units = mlp.w1.shape[1]
    if source.kind == "sequence":
        inputs = keras.Input((source.max_len,), dtype="int32", name="source")
        embed = keras.layers.Embedding(source.vocab_size, units)
        hidden = keras.layers.GlobalAveragePooling1D()(embed(inputs))
    else:
        inputs = keras.Input((source.output_width,), name="source")
        dense = keras.layers.Dense(units)
        hidden = dense(inputs)
    hidden = keras.layers.ReLU()(hidden)
    logits = keras.layers.Dense(mlp.w2.shape[1], name="logits")
    model = keras.Model(inputs, logits(hidden))
    if source.kind == "sequence":
        embed.set_weights([source.max_len * mlp.w1 + mlp.b1[None, :]])
    else:
        dense.set_weights([mlp.w1, mlp.b1])
    logits.set_weights([mlp.w2, mlp.b2])
    return model


@dataclass
class BagModel:
    """A trained bag link in numpy: what it emits, and its float predictions."""

    source: TaskSpec
    target: TaskSpec
    mlp: MLP
    tokens: np.ndarray  # the token of each output column, in emission order
    threshold: float = 0.5

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        z = self.mlp.logits(source_counts(self.source, x))
        return 1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0)))

    def decode(self, probabilities: np.ndarray, threshold: float | None = None) -> np.ndarray:
        return decode_bag(probabilities, self.tokens,
                          self.threshold if threshold is None else threshold,
                          self.target.max_len)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.decode(self.probabilities(x))

    @property
    def decoding(self) -> BagDecoding:
        return BagDecoding(tuple(int(t) for t in self.tokens), self.threshold)


def fit_bag(source: TaskSpec, target: TaskSpec, x: np.ndarray, y: np.ndarray,
            training: LinkTraining,
            validation: tuple[np.ndarray, np.ndarray] | None = None) -> BagModel | None:
    """A bag link fit on (x, y), stopped early on `validation`; None where no token is held
    by `MIN_TOKEN_ROWS` of the rows."""
    from links_tflite.agreement import sequence

    tokens = typical_order(y, target.vocab_size, MIN_TOKEN_ROWS)
    if len(tokens) == 0:
        return None
    checked = None
    if validation is not None and len(validation[0]):
        checked = (source_counts(source, validation[0]),
                   token_presence(validation[1], target.vocab_size)[:, tokens])
    mlp = train_mlp("multi_label", source_counts(source, x),
                    token_presence(y, target.vocab_size)[:, tokens], BAG_UNITS,
                    epochs=training.epochs, batch_size=max(training.batch_size, BAG_BATCH),
                    learning_rate=training.seq_learning_rate, dropout=training.dropout,
                    seed=training.seed, validation=checked, patience=training.patience,
                    min_delta=training.min_delta,
                    check_every=max(1, min(training.passes_per_epoch, training.epochs)))
    model = BagModel(source, target, mlp, tokens)
    probabilities = model.probabilities(x)
    scores = [float(sequence(model.decode(probabilities, t), y).mean()) for t in THRESHOLDS]
    model.threshold = THRESHOLDS[int(np.argmax(scores))]
    return model


def bag_link(model: BagModel, x: np.ndarray, training: LinkTraining) -> TrainedLink:
    """The bag link as a TrainedLink to export (one `link` part) and check."""
    import keras

    keras.utils.set_random_seed(training.seed)
    rows = np.random.default_rng(training.seed).permutation(len(x))[: training.representative_rows]
    inputs = (np.rint(x).astype(np.int32) if model.source.kind == "sequence"
              else np.asarray(x, np.float32))
    return TrainedLink(
        bag_architecture(model.source),
        [ExportPart("link", bag_keras_model(model.source, model.mlp), [inputs[rows]])],
        model.predict, x[rows], bag=model.decoding)


def bag_architecture(source: TaskSpec) -> str:
    return "seq2bag" if source.kind == "sequence" else "vec2bag"


def ordered_oracle_scores(predicted: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Per frame, 1 - token error rate of the predicted tokens put in the exact sequence's
    own order (each of its tokens the bag holds, as often as it occurs there; the others
    are insertions): what a decoder that finds the same tokens could at best reach."""
    scores = []
    for row_pred, row_exact in zip(predicted, exact, strict=True):
        held, ref = set(strip_padding(row_pred)), strip_padding(row_exact)
        if not ref:
            scores.append(1.0 if not held else 0.0)
            continue
        missed = sum(1 for t in ref if t not in held)
        extra = len(held - set(ref))
        scores.append(max(0.0, 1.0 - (missed + extra) / len(ref)))
    return np.asarray(scores, dtype=np.float64)
