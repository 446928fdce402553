"""One model output as a person reads it: the `decoded` field of a published output.

    readable(spec: TaskSpec, value: np.ndarray, *, decimals: int | None = None,
             image_size: tuple[int, int] | None = None) -> str | int | float | list | None

Pure (no state, no I/O) and small: it runs once per published output per frame, a few
microseconds a call (benchmarks/results/readable.md). `value` is the output vector exactly as
the model or the ensemble produced it (`Output.value`: any shape, flattened here). What comes
back, per task kind (the JSON value, ready for `json.dumps`):

- single_label: the class's name (`spec.labels`), else its index: `"busy"`, `7`.
- multi_label: the names (else indices) of the labels on (>= 0.5), in label order, `[]` for
  none: `["rain", "night"]`.
- sequence: the words, the task's `labels` read as its vocabulary, joined by spaces, up to the
  first token 0 (pad / end): `"morning clear quiet"`. A marker such as `<bos>` is left out,
  a token beyond the vocabulary reads `<id>`; without labels, the token ids: `[3, 6, 10]`.
- regression: the number (dim 1) or the list of numbers, rounded to `decimals` (default 2;
  0 gives whole numbers); a non-finite number is `null`: `1.17`, `[0.5, 3.25]`.
- localization: the box `[x0, y0, x1, y1]`, in pixels (whole numbers unless `decimals` is
  given) where `image_size` = (width, height) is known: `[40, 60, 160, 180]`; else as
  fractions of the image's width and height in [0, 1], rounded to `decimals` (default 3, a
  thousandth of the image): `[0.125, 0.25, 0.5, 0.75]`. The empty box (no area: nothing
  boxed, as a gated link says) is `null`.

A task spec does not know its image's size (a model sees a resized view): a caller that knows
the camera's resolution passes `image_size`; the published `decoded` box is normalised
otherwise (docs/mqtt.md says which).

The payload builder (agent.output) calls it once per published output, with the model's
`[publish.per_model.<id>] decimals`:
`readable(spec, output.value, decimals=settings.for_model(output.model).decimals)`; a
withheld output (`Output.withheld`) has no value, so nothing to read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from links_tflite.tasks import TaskSpec

# Decimals a number keeps when the caller gives none (`[publish.per_model.<id>] decimals`):
# regression outputs are counts and measures read to a hundredth; a normalised box to a
# thousandth of the image (about a pixel at 1000 px); a box in pixels to the whole pixel.
DEFAULT_DECIMALS: dict[str, int] = {"regression": 2, "localization": 3}
PIXEL_DECIMALS = 0

Readable = str | int | float | list[Any] | None


def readable(spec: TaskSpec, value: np.ndarray | Sequence[float], *,
             decimals: int | None = None,
             image_size: tuple[int, int] | None = None) -> Readable:
    """What a person reads of one output of a model with task `spec` (table above)."""
    values: list[float] = (value.reshape(-1) if isinstance(value, np.ndarray)
                           else np.asarray(value, dtype=np.float64).reshape(-1)).tolist()
    kind = spec.kind
    if kind == "single_label":
        index = max(range(len(values)), key=values.__getitem__)
        return spec.labels[index] if spec.labels else index
    if kind == "multi_label":
        on = [i for i, v in enumerate(values) if v >= 0.5]
        return [spec.labels[i] for i in on] if spec.labels else on
    if kind == "sequence":
        return _words(spec.labels, values)
    if kind == "regression":
        places = DEFAULT_DECIMALS["regression"] if decimals is None else decimals
        numbers = [_round(v, places) if math.isfinite(v) else None for v in values]
        return numbers[0] if len(numbers) == 1 else numbers
    return _box(values[:4], decimals, image_size)


def _words(vocabulary: tuple[str, ...], values: list[float]) -> str | list[int]:
    tokens = []
    for v in values:
        token = round(v) if math.isfinite(v) else 0
        if token == 0:
            break
        tokens.append(token)
    if not vocabulary:
        return tokens
    words = []
    for token in tokens:
        if 0 <= token < len(vocabulary):
            word = vocabulary[token]
            if not (word.startswith("<") and word.endswith(">")):
                words.append(word)
        else:
            words.append(f"<{token}>")
    return " ".join(words)


def _box(box: list[float], decimals: int | None,
         image_size: tuple[int, int] | None) -> list[float | int] | None:
    if len(box) < 4:
        return None
    x0, y0, x1, y1 = box
    if not math.isfinite(x0 + y0 + x1 + y1):  # a NaN or an infinity in any of them
        return None
    if x1 <= x0 or y1 <= y0:
        return None  # the empty box: nothing boxed
    if image_size is None:
        places = DEFAULT_DECIMALS["localization"] if decimals is None else decimals
        if places:
            return [round(x0, places), round(y0, places), round(x1, places), round(y1, places)]
        return [round(x0), round(y0), round(x1), round(y1)]
    width, height = image_size
    pixels = [x0 * width, y0 * height, x1 * width, y1 * height]
    if decimals is None:
        return [round(v) for v in pixels]  # whole pixels
    return [_round(v, decimals) for v in pixels]


def _round(v: float, places: int) -> float | int:
    """`v` to `places` decimals; a whole number (an int) for 0 places."""
    return round(v, places) if places else round(v)
