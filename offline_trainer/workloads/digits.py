"""`digits`: scikit-learn's real handwritten digits (1,797 8x8 images) as an input stream.

Seven black-box models cover the five task kinds. Where a label is not in the data set it is
derived here, from the real class or the real image — this docstring is the one place that
says how:
- digit    (single_label, 10): the data set's class.
- parity   (single_label, 2):  class % 2 (even, odd).
- strokes  (multi_label, 4):   from the class, as the digit is drawn: loop {0, 6, 8, 9},
  vertical bar {1, 4, 7}, horizontal bar {2, 4, 5, 7}, curve {0, 2, 3, 5, 6, 8, 9}.
- inkbox   (localization):     bounding box of the pixels with ink >= INK_THRESHOLD (of 16),
  as (x0, y0, x1, y1) in [0, 1] image coordinates, x1/y1 exclusive; empty box if no ink.
- inkmass  (regression, 1):    total ink of the image in full-pixel units (sum / 16), judged
  with a tolerance of 1 pixel's worth.
- name     (sequence):         the class's English name spelled in lower-case letters.
- roman    (sequence):         the class as a Roman numeral; 0 is "N" (nulla), as medieval
  tables wrote it.
Sequence token ids: 0 pads/ends, 1 is the start token for decoders, symbols from 2.
The models are deliberately of different size: digit is the expensive one. The images and the
derivations live in `agent.sources.digits`, so that the agent can stream the same data.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from agent.sources.digits import NAMES, ROMAN, STROKES, load_digits_stream, vocabulary
from links_tflite.tasks import TaskSpec
from offline_trainer.workloads.base import (
    WORKLOADS,
    ModelRecipe,
    Splits,
    Workload,
    WorkloadData,
)
from offline_trainer.workloads.builders import mlp

FRAME_PERIOD_S = 1.0


def tasks() -> dict[str, TaskSpec]:
    name_vocab, roman_vocab = vocabulary(NAMES), vocabulary(ROMAN)
    return {
        "digit": TaskSpec("single_label", 10, labels=tuple(str(d) for d in range(10))),
        "parity": TaskSpec("single_label", 2, labels=("even", "odd")),
        "strokes": TaskSpec("multi_label", 4, labels=tuple(STROKES)),
        "inkbox": TaskSpec("localization", 4),
        "inkmass": TaskSpec("regression", 1, tolerance=1.0),
        "name": TaskSpec("sequence", 0, vocab_size=len(name_vocab), labels=name_vocab,
                         max_len=max(map(len, NAMES))),
        "roman": TaskSpec("sequence", 0, vocab_size=len(roman_vocab), labels=roman_vocab,
                          max_len=max(map(len, ROMAN))),
    }


@WORKLOADS.register
class DigitsWorkload(Workload):
    name: ClassVar[str] = "digits"

    def load(self, seed: int) -> Splits:
        images, labels, truth = load_digits_stream(seed)
        everything = WorkloadData(
            frame_ids=np.arange(len(labels), dtype=np.int64),
            ts=np.arange(len(labels), dtype=np.float64) * FRAME_PERIOD_S,
            inputs={"image": images},
            ground_truth=truth,
        )
        n = len(labels)
        zoo_end, recording_end = n // 2, (n * 5) // 6
        return Splits(
            zoo=everything.rows(np.arange(0, zoo_end)),
            recording=everything.rows(np.arange(zoo_end, recording_end)),
            stream=everything.rows(np.arange(recording_end, n)),
        )

    def recipes(self) -> list[ModelRecipe]:
        spec = tasks()

        def recipe(model_id: str, hidden: list[int], epochs: int, text: str) -> ModelRecipe:
            task = spec[model_id]
            return ModelRecipe(model_id, task, "image",
                               lambda shape: mlp(shape, hidden, task), epochs, text)

        return [
            recipe("digit", [512, 512], 30, "MLP 64-512-512-10: the expensive classifier"),
            recipe("parity", [24], 30, "MLP 64-24-2: a cheap parity detector"),
            recipe("strokes", [64], 40, "MLP 64-64-4: which strokes the digit is drawn with"),
            recipe("inkbox", [128, 64], 60, "MLP 64-128-64-(1+4): is there ink, and its box"),
            recipe("inkmass", [32], 60, "MLP 64-32-1: how much ink"),
            recipe("name", [128], 60, "MLP 64-128-(5x17): the digit's name, letter by letter"),
            recipe("roman", [64], 60, "MLP 64-64-(4x6): the digit as a Roman numeral"),
        ]
