"""How well a model's own last exact output stands in for it later: its reuse curve.

r(a) is the mean agreement (`links_tflite.agreement`) between a model's exact output on a
frame and its exact output a frames later *of the same camera*. It is what `run/p` serves
between a model's runs (agent/planning.py) and what a frame filter trades on. Measured on
outputs in stream order, where consecutive frames of a camera are consecutive in the stream
(the agent's profiling windows; a recording made in bursts): a recording whose frames of one
camera lie minutes apart measures reuse at that spacing, not the stream's.
"""

from __future__ import annotations

import numpy as np

from links_tflite.agreement import agreement
from links_tflite.tasks import TaskSpec


def reuse_curve(spec: TaskSpec, outputs: np.ndarray, cameras: np.ndarray | None,
                max_age: int) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """(r(1), ..., r(A)) and the number of frame pairs behind each, A <= `max_age` being the
    largest age with at least one pair. `outputs` in stream order, one row a frame;
    `cameras` the camera of each row (None: one camera)."""
    cameras = np.zeros(len(outputs), dtype=np.int64) if cameras is None else np.asarray(cameras)
    if len(cameras) != len(outputs):
        raise ValueError(f"reuse_curve: {len(outputs)} outputs but {len(cameras)} cameras")
    sums = np.zeros(max_age)
    counts = np.zeros(max_age, dtype=np.int64)
    for camera in np.unique(cameras):
        rows = outputs[cameras == camera]
        for age in range(1, min(max_age, len(rows) - 1) + 1):
            scores = agreement(spec, rows[:-age], rows[age:])
            sums[age - 1] += scores.sum()
            counts[age - 1] += len(scores)
    covered = max_age if counts.all() else int(np.argmin(counts > 0))  # the first age without
    return (tuple(float(s / c) for s, c in zip(sums[:covered], counts[:covered], strict=True)),
            tuple(int(c) for c in counts[:covered]))
