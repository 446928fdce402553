"""Keras builders for the zoo's black-box models (imported lazily: TensorFlow is heavy).

Each builder returns a compiled model whose output matches its task spec: probabilities for
labels, a sigmoid box, linear numbers, or (max_len, vocab) per-position probabilities for a
sequence — `token_model` turns the last into the exported black box that emits token ids.
"""

from __future__ import annotations

from typing import Any

from links_tflite.tasks import TaskSpec

LOSS = {
    "single_label": "categorical_crossentropy",
    "multi_label": "binary_crossentropy",
    "localization": "mse",
    "regression": "mse",
    "sequence": "categorical_crossentropy",
}


def _head(keras: Any, hidden: Any, task: TaskSpec) -> Any:
    if task.kind == "sequence":
        flat = keras.layers.Dense(task.max_len * task.vocab_size)(hidden)
        shaped = keras.layers.Reshape((task.max_len, task.vocab_size))(flat)
        return keras.layers.Softmax(axis=-1)(shaped)
    return keras.layers.Dense(task.dim, activation=task.activation)(hidden)


def _compile(keras: Any, inputs: Any, outputs: Any, task: TaskSpec, lr: float) -> Any:
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=LOSS[task.kind])
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
