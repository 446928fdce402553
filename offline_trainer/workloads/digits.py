"""`digits`: scikit-learn's real handwritten digits (1,797 8x8 images) as an input stream.

Models and how their ground truth is derived (the one place this is documented in code):
- digit   (single_label, 10): the data set's class.
- parity  (single_label, 2):  class % 2 (even, odd).
- inkbox  (localization):     bounding box of the pixels with ink >= INK_THRESHOLD (of 16),
  as (x0, y0, x1, y1) in [0, 1] image coordinates, x1/y1 exclusive.
The models are deliberately of different size (digit is the expensive one).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from links_tflite.tasks import TaskSpec
from offline_trainer.workloads.base import ModelRecipe, Splits, Workload, WorkloadData

INK_THRESHOLD = 4.0
SIDE = 8
FRAME_PERIOD_S = 1.0


def ink_boxes(images: np.ndarray) -> np.ndarray:
    """Ground-truth ink box per 8x8 image; an image with no ink gets the empty box."""
    boxes = np.zeros((images.shape[0], 4), dtype=np.float32)
    for i, image in enumerate(images.reshape(-1, SIDE, SIDE)):
        rows, cols = np.nonzero(image >= INK_THRESHOLD)
        if rows.size:
            boxes[i] = [cols.min() / SIDE, rows.min() / SIDE, (cols.max() + 1) / SIDE,
                        (rows.max() + 1) / SIDE]
    return boxes


def one_hot(labels: np.ndarray, classes: int) -> np.ndarray:
    return np.eye(classes, dtype=np.float32)[labels]


def _mlp(input_shape: tuple[int, ...], hidden: list[int], out: int, activation: str,
         loss: str) -> Any:
    import keras

    layers: list[Any] = [keras.Input(input_shape), keras.layers.Flatten()]
    layers += [keras.layers.Dense(units, activation="relu") for units in hidden]
    layers.append(keras.layers.Dense(out, activation=activation))
    model = keras.Sequential(layers)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    return model


class DigitsWorkload(Workload):
    name: ClassVar[str] = "digits"

    def load(self, seed: int) -> Splits:
        from sklearn.datasets import load_digits

        data = load_digits()
        order = np.random.default_rng(seed).permutation(len(data.target))
        images = (data.images[order] / 16.0).astype(np.float32)
        labels = data.target[order].astype(np.int64)
        everything = WorkloadData(
            frame_ids=np.arange(len(labels), dtype=np.int64),
            ts=np.arange(len(labels), dtype=np.float64) * FRAME_PERIOD_S,
            inputs={"image": images},
            ground_truth={
                "digit": one_hot(labels, 10),
                "parity": one_hot(labels % 2, 2),
                "inkbox": ink_boxes(data.images[order]),
            },
        )
        n = len(labels)
        zoo_end, recording_end = n // 2, (n * 5) // 6
        return Splits(
            zoo=everything.rows(np.arange(0, zoo_end)),
            recording=everything.rows(np.arange(zoo_end, recording_end)),
            stream=everything.rows(np.arange(recording_end, n)),
        )

    def recipes(self) -> list[ModelRecipe]:
        return [
            ModelRecipe(
                model_id="digit",
                task=TaskSpec("single_label", 10, labels=tuple(str(d) for d in range(10))),
                input_modality="image",
                build=lambda shape: _mlp(shape, [512, 512], 10, "softmax",
                                         "categorical_crossentropy"),
                epochs=30,
                description="MLP 64-512-512-10: the expensive classifier",
            ),
            ModelRecipe(
                model_id="parity",
                task=TaskSpec("single_label", 2, labels=("even", "odd")),
                input_modality="image",
                build=lambda shape: _mlp(shape, [24], 2, "softmax", "categorical_crossentropy"),
                epochs=30,
                description="MLP 64-24-2: a cheap parity detector",
            ),
            ModelRecipe(
                model_id="inkbox",
                task=TaskSpec("localization", 4),
                input_modality="image",
                build=lambda shape: _mlp(shape, [128, 64], 4, "sigmoid", "mse"),
                epochs=60,
                description="MLP 64-128-64-4: regresses the inked area's box",
            ),
        ]
