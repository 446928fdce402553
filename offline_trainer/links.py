"""Link builders and training: g_ij maps model i's output to model j's output.

vec2vec is the paper's architecture: Dense(2*out) -> Dropout -> ReLU -> Dense(out, task
activation), trained with RMSprop on the target model's own (soft) outputs.

The task activation is the model's last layer, but what is exported is the model up to the
logits (`logits_model`): an int8 softmax output has a resolution of 1/256 and turns the
near-ties of weak links into exact ties, so the host applies the activation in float
(`links_tflite.tasks.activate`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from links_tflite.tasks import TaskSpec

# Loss per target task kind: soft-label cross-entropy for labels, squared error for numbers.
LOSS = {
    "single_label": "categorical_crossentropy",
    "multi_label": "binary_crossentropy",
    "localization": "mse",
    "regression": "mse",
}


@dataclass(frozen=True)
class LinkTraining:
    epochs: int = 120
    batch_size: int = 32
    learning_rate: float = 3e-3
    dropout: float = 0.1
    seed: int = 0


def build_vec2vec(source: TaskSpec, target: TaskSpec, training: LinkTraining) -> Any:
    import keras

    if target.kind not in LOSS:
        raise NotImplementedError(f"vec2vec cannot predict a {target.kind} target")
    keras.utils.set_random_seed(training.seed)
    inputs = keras.Input((source.output_width,))
    hidden = keras.layers.Dense(2 * target.dim)(inputs)
    hidden = keras.layers.Dropout(training.dropout)(hidden)
    hidden = keras.layers.ReLU()(hidden)
    logits = keras.layers.Dense(target.dim, name="logits")(hidden)
    outputs = keras.layers.Activation(target.activation)(logits)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.RMSprop(training.learning_rate),
                  loss=LOSS[target.kind])
    return model


def train_vec2vec(source: TaskSpec, target: TaskSpec, x: np.ndarray, y: np.ndarray,
                  training: LinkTraining) -> Any:
    model = build_vec2vec(source, target, training)
    model.fit(x.astype(np.float32), y.astype(np.float32), epochs=training.epochs,
              batch_size=training.batch_size, verbose=0, shuffle=True)
    return model


def logits_model(model: Any) -> Any:
    """The trained link without its final activation: what is exported to TFLite."""
    import keras

    return keras.Model(model.inputs, model.get_layer("logits").output)
