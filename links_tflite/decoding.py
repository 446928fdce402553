"""Greedy sequence decoding on the host, through two TFLite files and no TensorFlow.

A link whose target is a sequence (vec2seq, seq2seq) is exported as two files:
- the encoder: source output -> `output_0` memory (batch, slots, units), `output_1` h,
  `output_2` c (the decoder's initial LSTM state);
- the one-step decoder: inputs `token` (batch, 1), `h`, `c`, `memory` -> `output_0` logits
  over the vocabulary, `output_1` h, `output_2` c.
The loop lives here, not in the file, so a file holds one step only (fixed shapes, which is
what int8 conversion of an LSTM needs) and the host stops as soon as every row has ended.

Token convention: ids are float32 in (N, max_len), right-padded with PAD = 0; BOS = 1 starts
the decoder; real tokens start at 2. A predicted 0 ends the row.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from links_tflite.agreement import PAD_TOKEN
from links_tflite.interpreter import MultiTensorRunner

log = logging.getLogger(__name__)

BOS_TOKEN = 1
ENCODER_OUTPUTS = ("memory", "h", "c")  # output_0, output_1, output_2 of the encoder
STEP_INPUTS = ("token", "h", "c", "memory")


def greedy_decode(encoder: MultiTensorRunner, step: MultiTensorRunner, source: np.ndarray,
                  max_len: int) -> np.ndarray:
    """Token ids (N, max_len) float32, 0-padded, decoded greedily for a batch of sources."""
    source = np.asarray(source, dtype=np.float32)
    if source.ndim == 1:
        source = source[None, :]
    (name,) = encoder.input_names
    encoded = encoder({name: source})
    memory, h, c = (encoded[f"output_{i}"] for i in range(3))
    n = source.shape[0]
    tokens = np.zeros((n, max_len), dtype=np.float32)
    previous = np.full((n, 1), BOS_TOKEN, dtype=np.float32)
    alive = np.ones(n, dtype=bool)
    for position in range(max_len):
        out = step({"token": previous, "h": h, "c": c, "memory": memory})
        chosen = np.argmax(out["output_0"], axis=-1).astype(np.float32)
        chosen[~alive] = PAD_TOKEN
        tokens[:, position] = chosen
        alive &= chosen != PAD_TOKEN
        if not alive.any():
            break
        previous = chosen[:, None]
        h, c = out["output_1"], out["output_2"]
    return tokens


class SequenceDecoder:
    """A sequence link ready to run: its encoder and one-step decoder files, loaded."""

    def __init__(self, encoder_path: str | Path, step_path: str | Path, max_len: int,
                 num_threads: int = 1) -> None:
        self.encoder = MultiTensorRunner(encoder_path, num_threads)
        self.step = MultiTensorRunner(step_path, num_threads)
        if set(self.step.input_names) != set(STEP_INPUTS):
            raise ValueError(f"{step_path}: decoder step inputs {self.step.input_names}, "
                             f"expected {STEP_INPUTS}")
        if len(self.encoder.input_names) != 1:
            raise ValueError(f"{encoder_path}: an encoder takes one input")
        self.max_len = max_len

    def __call__(self, source: np.ndarray) -> np.ndarray:
        return greedy_decode(self.encoder, self.step, source, self.max_len)

    def run_one(self, example: np.ndarray) -> np.ndarray:
        return self(np.asarray(example, dtype=np.float32)[None, ...])[0]

    def ops(self) -> list[tuple[str, tuple[str, ...]]]:
        return self.encoder.ops() + self.step.ops()
