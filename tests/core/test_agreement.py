"""Agreement metrics on hand-computed cases (DESIGN: agreement per task kind)."""

import numpy as np
import pytest

from links_tflite.agreement import agreement, iou, mean_agreement, side_figures
from links_tflite.tasks import TaskSpec


def test_single_label_is_argmax_equality() -> None:
    spec = TaskSpec("single_label", 3)
    pred = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.2, 0.6]])
    exact = np.array([[0.0, 1.0, 0.0], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    np.testing.assert_array_equal(agreement(spec, pred, exact), [1.0, 0.0, 1.0])


def test_multi_label_averages_labels_at_one_half() -> None:
    spec = TaskSpec("multi_label", 4)
    pred = np.array([[0.9, 0.1, 0.6, 0.4]])
    exact = np.array([[0.8, 0.2, 0.4, 0.4]])
    # labels agree on 0, 1, 3; disagree on 2 -> 3/4
    assert mean_agreement(spec, pred, exact) == pytest.approx(0.75)


def test_iou_by_hand() -> None:
    # Two unit-area boxes overlapping on a 0.5 x 1 strip: inter 0.5, union 1.5.
    a = np.array([[0.0, 0.0, 1.0, 1.0]])
    b = np.array([[0.5, 0.0, 1.5, 1.0]])
    assert iou(a, b)[0] == pytest.approx(1 / 3)
    assert iou(a, a)[0] == pytest.approx(1.0)
    disjoint = np.array([[2.0, 2.0, 3.0, 3.0]])
    assert iou(a, disjoint)[0] == 0.0


def test_empty_boxes() -> None:
    empty = np.array([[0.0, 0.0, 0.0, 0.0]])
    inverted = np.array([[0.6, 0.6, 0.2, 0.2]])  # no area: empty too
    box = np.array([[0.1, 0.1, 0.5, 0.5]])
    assert iou(empty, empty)[0] == 1.0
    assert iou(empty, inverted)[0] == 1.0
    assert iou(empty, box)[0] == 0.0
    assert iou(box, empty)[0] == 0.0


def test_regression_within_tolerance() -> None:
    spec = TaskSpec("regression", 1)  # default tolerance 0.5, as for counts
    pred = np.array([[3.4], [3.6], [2.5]])
    exact = np.array([[3.0], [3.0], [3.0]])
    np.testing.assert_array_equal(agreement(spec, pred, exact), [1.0, 0.0, 1.0])
    assert side_figures(spec, pred, exact)["MAE"] == pytest.approx((0.4 + 0.6 + 0.5) / 3)


def test_multi_output_regression_all_within_tolerance() -> None:
    """Two outputs, one off: half credit by default, none under all_within_tolerance."""
    pred = np.array([[1.0, 5.0], [1.0, 2.2]])
    exact = np.array([[1.2, 2.0], [1.0, 2.0]])
    np.testing.assert_array_equal(agreement(TaskSpec("regression", 2), pred, exact), [0.5, 1.0])
    strict = TaskSpec("regression", 2, measure="all_within_tolerance")
    np.testing.assert_array_equal(agreement(strict, pred, exact), [0.0, 1.0])


def test_sequence_is_one_minus_token_error_rate() -> None:
    spec = TaskSpec("sequence", 0, vocab_size=20, max_len=6)
    exact = np.array([[5, 6, 7, 8, 0, 0], [5, 6, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
    pred = np.array([[5, 9, 7, 8, 0, 0], [1, 2, 3, 4, 9, 9], [0, 3, 3, 0, 0, 0]])
    # row 0: one substitution in 4 -> 0.75; row 1: 6 edits for 2 tokens -> clipped 0;
    # row 2: both empty (tokens after the first pad are ignored) -> 1.
    np.testing.assert_allclose(agreement(spec, pred, exact), [0.75, 0.0, 1.0])
    assert side_figures(spec, pred, exact)["exact_match"] == pytest.approx(1 / 3)


def test_multi_label_map_beside() -> None:
    spec = TaskSpec("multi_label", 1)
    scores = np.array([[0.9], [0.8], [0.3], [0.1]])
    labels = np.array([[1.0], [0.0], [1.0], [0.0]])
    # ranked: hit, miss, hit -> precision at hits 1 and 2/3 -> AP = (1 + 2/3) / 2
    assert side_figures(spec, scores, labels)["mAP"] == pytest.approx((1 + 2 / 3) / 2)


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        agreement(TaskSpec("single_label", 3), np.zeros((2, 3)), np.zeros((3, 3)))
