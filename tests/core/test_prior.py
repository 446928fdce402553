"""links_tflite.prior's stream prior: the constant fit on a stretch of a stream, with what it
agrees on the frames it was not fit on."""

from __future__ import annotations

import numpy as np
import pytest

from links_tflite.prior import stream_prior
from links_tflite.tasks import TaskSpec

LABELS = TaskSpec("single_label", 3)


def one_hot(classes: list[int]) -> np.ndarray:
    return np.eye(3, dtype=np.float32)[classes]


def test_a_stream_that_stays_put_gets_its_constant_and_a_full_figure() -> None:
    value, figure = stream_prior(LABELS, one_hot([2] * 9 + [0]))
    assert int(np.argmax(value)) == 2
    assert figure == pytest.approx(0.9)  # the one frame of class 0 is missed, out of sample


def test_a_stream_that_moves_within_the_stretch_is_not_fit_away() -> None:
    """Each half's constant is scored on the other half: a stream that changed class half
    way agrees 0 out of sample, though a constant fit on all of it agrees 0.5 in sample."""
    value, figure = stream_prior(LABELS, one_hot([0] * 6 + [1] * 6))
    assert figure == 0.0
    assert value.shape == (3,)


def test_a_box_stream_prior_is_one_of_its_boxes() -> None:
    boxes = TaskSpec("localization", 4)
    rows = np.array([[0.1, 0.1, 0.5, 0.5]] * 4 + [[0.6, 0.6, 0.9, 0.9]], dtype=np.float32)
    value, figure = stream_prior(boxes, rows)
    assert value.tolist() == pytest.approx([0.1, 0.1, 0.5, 0.5])
    assert 0.0 < figure < 1.0


def test_one_frame_is_not_enough() -> None:
    with pytest.raises(ValueError, match="two frames"):
        stream_prior(LABELS, one_hot([1]))
