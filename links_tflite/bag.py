"""Bag-of-tokens links: a sequence target predicted as the set of tokens it holds.

A decoder over a large vocabulary is costly to train, large to ship (its output layer is
units x vocabulary) and often learns nothing but the most common tokens. A bag link is a
vector link instead: one file, source output -> one logit per token it can emit (`tokens`,
the target's tokens seen often enough on the training frames). The host applies the
sigmoid, keeps the tokens at or above `threshold` and emits them in the order their columns
come, which is the order the tokens typically take in the target (their mean relative
position on the training frames), up to `max_len`. A token is emitted once per frame.

The manifest marks such a link with `output` = `bag` (architecture `vec2bag` or `seq2bag`)
and gives `tokens` and `threshold`; it has no decoder file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from links_tflite.agreement import PAD_TOKEN
from links_tflite.interpreter import TFLiteRunner

BAG_OUTPUT = "bag"
FIRST_TOKEN = 2  # ids 0 (PAD) and 1 (BOS) are never emitted


def token_presence(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """(N, vocab_size) 0/1: which token ids each row holds before its first PAD."""
    ids = np.rint(np.asarray(tokens, dtype=np.float64)).astype(np.int64).clip(0, vocab_size - 1)
    ended = np.cumsum(ids == PAD_TOKEN, axis=1) > 0
    rows = np.broadcast_to(np.arange(len(ids))[:, None], ids.shape)
    presence = np.zeros((len(ids), vocab_size), dtype=np.float32)
    presence[rows[~ended], ids[~ended]] = 1.0
    presence[:, :FIRST_TOKEN] = 0.0
    return presence


def typical_order(tokens: np.ndarray, vocab_size: int, min_rows: int = 1) -> np.ndarray:
    """Token ids held by at least `min_rows` rows, sorted by their mean relative position
    in the rows (0 = first, 1 = last; ties by id): the order a bag link emits them in."""
    ids = np.rint(np.asarray(tokens, dtype=np.float64)).astype(np.int64).clip(0, vocab_size - 1)
    ended = np.cumsum(ids == PAD_TOKEN, axis=1) > 0
    lengths = (~ended).sum(axis=1)
    relative = np.arange(ids.shape[1])[None, :] / np.maximum(lengths - 1, 1)[:, None]
    live = ~ended & (ids >= FIRST_TOKEN)
    total = np.bincount(ids[live], weights=relative[live], minlength=vocab_size)
    count = np.bincount(ids[live], minlength=vocab_size)
    held = token_presence(ids, vocab_size).sum(axis=0)
    chosen = np.flatnonzero(held >= max(1, min_rows))
    mean = total[chosen] / np.maximum(count[chosen], 1)
    return chosen[np.lexsort((chosen, mean))]


def decode_bag(probabilities: np.ndarray, tokens: np.ndarray, threshold: float,
               max_len: int) -> np.ndarray:
    """Token ids (N, max_len) float32, 0-padded: per row, the columns' `tokens` whose
    probability is at least `threshold`, in column order, at most `max_len`."""
    probabilities = np.asarray(probabilities, dtype=np.float32)
    if probabilities.ndim == 1:
        probabilities = probabilities[None, :]
    kept = probabilities >= threshold
    position = np.cumsum(kept, axis=1) - 1
    out = np.zeros((len(probabilities), max_len), dtype=np.float32)
    rows, columns = np.nonzero(kept & (position < max_len))
    out[rows, position[rows, columns]] = np.asarray(tokens, dtype=np.float32)[columns]
    return out


@dataclass(frozen=True)
class BagDecoding:
    """What turns a bag link's logits into token ids (the manifest's `tokens`, `threshold`)."""

    tokens: tuple[int, ...]
    threshold: float

    def check(self, vocab_size: int, width: int | None = None) -> str:
        """'' if usable with a target of `vocab_size` tokens (and a file of `width` logits),
        else what is wrong."""
        if not self.tokens:
            return "tokens: at least one token is needed"
        if len(set(self.tokens)) != len(self.tokens):
            return "tokens: a token is listed twice"
        bad = [t for t in self.tokens if not FIRST_TOKEN <= t < vocab_size]
        if bad:
            return f"tokens: ids must be in [{FIRST_TOKEN}, {vocab_size}), got {bad[:5]}"
        if not 0.0 < self.threshold < 1.0:
            return f"threshold: must be in (0, 1), got {self.threshold}"
        if width is not None and width != len(self.tokens):
            return f"the file has {width} logits for {len(self.tokens)} tokens"
        return ""


class BagLink:
    """A bag link ready to run: its file to the logits, then the host's sigmoid and ordered
    read-out (`decode_bag`). Outputs token ids as a decoder link does."""

    def __init__(self, runner: TFLiteRunner, decoding: BagDecoding, max_len: int) -> None:
        self.runner = runner
        self.tokens = np.asarray(decoding.tokens, dtype=np.float32)
        self.threshold = decoding.threshold
        self.max_len = max_len

    def _decode(self, logits: np.ndarray) -> np.ndarray:
        z = np.asarray(logits, dtype=np.float32)
        return decode_bag(1.0 / (1.0 + np.exp(-z)), self.tokens, self.threshold, self.max_len)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self._decode(self.runner(batch))

    def run_one(self, example: np.ndarray) -> np.ndarray:
        return self._decode(self.runner.run_one(example))[0]


def parse_tokens(raw: Sequence[object]) -> tuple[int, ...]:
    """The manifest's `tokens` as ints (TypeError/ValueError on anything else)."""
    if isinstance(raw, str | bytes) or not isinstance(raw, list | tuple):
        raise TypeError("tokens must be a list of token ids")
    values = []
    for value in raw:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"token ids must be integers, got {value!r}")
        values.append(value)
    return tuple(values)
