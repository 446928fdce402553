"""Reuse curves (links_tflite/temporal.py): ages count frames of the same camera."""

from __future__ import annotations

import numpy as np
import pytest

from links_tflite.tasks import TaskSpec
from links_tflite.temporal import reuse_curve

LABEL = TaskSpec("single_label", 3)


def one_hot(labels: list[int]) -> np.ndarray:
    return np.eye(3, dtype=np.float32)[labels]


def test_one_camera_changing_every_other_frame() -> None:
    curve, pairs = reuse_curve(LABEL, one_hot([0, 0, 1, 1, 2, 2]), None, 3)
    assert curve == pytest.approx((3 / 5, 0.0, 0.0))  # same label in 3 of 5 pairs at age 1
    assert pairs == (5, 4, 3)


def test_ages_count_frames_of_the_same_camera() -> None:
    """Two interleaved cameras: each one's label never changes, the stream's does at every
    frame; reuse within a camera agrees fully."""
    outputs = one_hot([0, 1, 0, 1, 0, 1])
    curve, pairs = reuse_curve(LABEL, outputs, np.array([0, 1, 0, 1, 0, 1]), 5)
    assert curve == (1.0, 1.0) and pairs == (4, 2)  # 3 frames a camera: ages 1 and 2 only


def test_regression_within_tolerance() -> None:
    spec = TaskSpec("regression", 1, tolerance=0.5)
    values = np.array([[0.0], [0.4], [0.8], [1.2]], dtype=np.float32)
    curve, _ = reuse_curve(spec, values, None, 3)
    assert curve == pytest.approx((1.0, 0.0, 0.0))


def test_mismatched_cameras_are_refused() -> None:
    with pytest.raises(ValueError, match="3 outputs but 2 cameras"):
        reuse_curve(LABEL, one_hot([0, 1, 2]), np.array([0, 1]), 2)
