"""`digits`: scikit-learn's real handwritten digits as a stream, with derived ground truth.

The data ships inside scikit-learn (no download); on a device without it this source says so.
Which labels are derived, and how, is documented in `offline_trainer.workloads.digits`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from agent.configbase import Paced
from agent.sources.base import SOURCES, Frame, Source, paced

INK_THRESHOLD = 4.0
SIDE = 8
FRAME_PERIOD_S = 1.0
STROKES = {
    "loop": (0, 6, 8, 9),
    "vertical": (1, 4, 7),
    "horizontal": (2, 4, 5, 7),
    "curve": (0, 2, 3, 5, 6, 8, 9),
}
NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ROMAN = ("N", "I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX")
SPECIALS = ("<pad>", "<bos>")


def vocabulary(words: tuple[str, ...]) -> tuple[str, ...]:
    """Token 0 pads/ends, 1 starts (for decoders), the symbols of `words` from 2."""
    return (*SPECIALS, *sorted({ch for word in words for ch in word}))


def spell(words: tuple[str, ...], labels: np.ndarray) -> np.ndarray:
    """Token ids (N, max_len), 0-padded, of each label's word."""
    vocab = vocabulary(words)
    width = max(len(w) for w in words)
    tokens = np.zeros((len(labels), width), dtype=np.float32)
    for row, label in enumerate(labels):
        ids = [vocab.index(ch) for ch in words[int(label)]]
        tokens[row, : len(ids)] = ids
    return tokens


def ink_boxes(images: np.ndarray) -> np.ndarray:
    """Box of the pixels with ink >= INK_THRESHOLD per 8x8 image (0..16); empty if no ink."""
    boxes = np.zeros((images.shape[0], 4), dtype=np.float32)
    for i, image in enumerate(images.reshape(-1, SIDE, SIDE)):
        rows, cols = np.nonzero(image >= INK_THRESHOLD)
        if rows.size:
            boxes[i] = [cols.min() / SIDE, rows.min() / SIDE, (cols.max() + 1) / SIDE,
                        (rows.max() + 1) / SIDE]
    return boxes


def ground_truth(images_raw: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Every model's ground truth from the raw 0..16 images and their classes."""
    return {
        "digit": np.eye(10, dtype=np.float32)[labels],
        "parity": np.eye(2, dtype=np.float32)[labels % 2],
        "strokes": np.stack([np.isin(labels, d).astype(np.float32) for d in STROKES.values()],
                            axis=1),
        "inkbox": ink_boxes(images_raw),
        "inkmass": (images_raw.reshape(len(labels), -1).sum(axis=1, keepdims=True) / 16.0
                    ).astype(np.float32),
        "name": spell(NAMES, labels),
        "roman": spell(ROMAN, labels),
    }


def load_digits_stream(seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(images in [0, 1], classes, ground truth), in a seeded order."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise RuntimeError("the digits source needs scikit-learn: pip install scikit-learn"
                           ) from None
    data = load_digits()
    order = np.random.default_rng(seed).permutation(len(data.target))
    raw = data.images[order]
    labels = data.target[order].astype(np.int64)
    return (raw / 16.0).astype(np.float32), labels, ground_truth(raw, labels)


class DigitsSourceConfig(Paced):
    """scikit-learn's handwritten digits in a seeded order (needs scikit-learn)."""

    type: Literal["digits"]
    seed: int = Field(0, ge=0, le=2**31)
    start: int = Field(0, ge=0, le=1796)


@SOURCES.register
class DigitsSource(Source):
    type: ClassVar[str] = "digits"
    config_class = DigitsSourceConfig
    modalities = ("image",)

    def _frames(self) -> Iterator[Frame]:
        images, _, truth = load_digits_stream(self.config.seed)
        start = self.config.start
        while True:
            for i in range(start, len(images)):
                yield Frame(frame_id=i, ts=i * FRAME_PERIOD_S, modalities={"image": images[i]},
                            ground_truth={k: v[i] for k, v in truth.items()})
            if not self.config.loop:
                return
            start = 0

    def frames(self) -> Iterator[Frame]:
        return paced(self._frames(), self.config.fps)
