"""Keras builders for the zoo's black-box models (imported lazily: TensorFlow is heavy).

Each builder returns a compiled model whose output matches its task spec: probabilities for
labels, linear numbers, (max_len, vocab) per-position probabilities for a sequence, and for
localization five numbers — the probability that there is something to box, then the box.
`black_box` turns a trained model into what is exported: token ids for a sequence, the box
(or the empty box when nothing is there) for localization.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from links_tflite.agreement import box_area
from links_tflite.tasks import TaskSpec

LOSS = {
    "single_label": "categorical_crossentropy",
    "multi_label": "binary_crossentropy",
    "regression": "mse",
    "sequence": "categorical_crossentropy",
}
BOX_WEIGHT = 30.0


def presence_box_targets(boxes: np.ndarray) -> np.ndarray:
    """(is there a box, box) rows, what `presence_box_loss` fits: the empty box is "no box"."""
    boxes = np.asarray(boxes, dtype=np.float32)
    present = (box_area(boxes) > 0).astype(np.float32)[:, None]
    return np.concatenate([present, boxes], axis=1)


def presence_box_loss(y_true: Any, y_pred: Any) -> Any:
    """Is there something to box (cross-entropy), and where (squared error, only if there is)."""
    import keras

    presence = keras.ops.mean(keras.losses.binary_crossentropy(y_true[:, :1], y_pred[:, :1]))
    box = keras.ops.mean(y_true[:, :1] * keras.ops.square(y_true[:, 1:] - y_pred[:, 1:]))
    return presence + BOX_WEIGHT * box


def _head(keras: Any, hidden: Any, task: TaskSpec) -> Any:
    if task.kind == "sequence":
        flat = keras.layers.Dense(task.max_len * task.vocab_size)(hidden)
        shaped = keras.layers.Reshape((task.max_len, task.vocab_size))(flat)
        return keras.layers.Softmax(axis=-1)(shaped)
    if task.kind == "localization":
        return keras.layers.Dense(5, activation="sigmoid")(hidden)
    return keras.layers.Dense(task.dim, activation=task.activation)(hidden)


def _compile(keras: Any, inputs: Any, outputs: Any, task: TaskSpec, lr: float) -> Any:
    model = keras.Model(inputs, outputs)
    loss = presence_box_loss if task.kind == "localization" else LOSS[task.kind]
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss)
    return model


def mlp(input_shape: tuple[int, ...], hidden: list[int], task: TaskSpec,
        lr: float = 1e-3) -> Any:
    import keras

    inputs = keras.Input(input_shape)
    x = keras.layers.Flatten()(inputs)
    for units in hidden:
        x = keras.layers.Dense(units, activation="relu")(x)
    return _compile(keras, inputs, _head(keras, x, task), task, lr)


def cnn(input_shape: tuple[int, ...], filters: list[int], dense: int, task: TaskSpec,
        lr: float = 1e-3) -> Any:
    """Conv(3x3, relu) + 2x2 max-pool per entry of `filters`, then one dense layer."""
    import keras

    inputs = keras.Input(input_shape)
    x = inputs
    for width in filters:
        x = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(dense, activation="relu")(x)
    return _compile(keras, inputs, _head(keras, x, task), task, lr)


def token_model(model: Any) -> Any:
    """The exported black box of a sequence model: token ids (argmax per position) as float."""
    import keras
    import tensorflow as tf

    # tf.argmax rather than keras.ops.argmax: the latter adds NaN handling (BitwiseAnd) that
    # has no TFLite builtin.
    tokens = keras.layers.Lambda(
        lambda p: tf.cast(tf.argmax(p, axis=-1), tf.float32), name="tokens"
    )(model.output)
    return keras.Model(model.inputs, tokens)


def gated_box_model(model: Any) -> Any:
    """The exported black box of a localization model: the box where the model sees something,
    the empty box (0, 0, 0, 0) where it does not — "nothing there" is an answer too."""
    import keras
    import tensorflow as tf

    def gate(out: Any) -> Any:
        return out[:, 1:] * tf.cast(out[:, :1] >= 0.5, tf.float32)

    return keras.Model(model.inputs, keras.layers.Lambda(gate, name="gated_box")(model.output))


def black_box(model: Any, task: TaskSpec) -> Any:
    """What the zoo exports for a trained model of this task."""
    if task.kind == "sequence":
        return token_model(model)
    if task.kind == "localization":
        return gated_box_model(model)
    return model
