"""The confidence gate: a prediction's raw confidence, its calibration into the probability
that it agrees with the model, and the token bucket that spends the spare delay on the least
confident predictions."""

from __future__ import annotations

import numpy as np
import pytest

from agent.gate import MIN_PAIRS, Calibration, Gate, raw_confidence
from links_tflite.tasks import TaskSpec


def test_raw_confidence_per_kind() -> None:
    label = TaskSpec(kind="single_label", dim=3)
    assert raw_confidence(label, np.array([0.7, 0.2, 0.1])) == pytest.approx(0.5)
    assert raw_confidence(label, np.array([0.4, 0.4, 0.2])) == pytest.approx(0.0)
    labels = TaskSpec(kind="multi_label", dim=2)
    assert raw_confidence(labels, np.array([1.0, 0.5])) == pytest.approx(0.5)
    assert raw_confidence(TaskSpec(kind="regression", dim=1), np.array([3.0])) is None


def test_calibration_is_monotone_and_falls_back() -> None:
    calibration = Calibration()
    assert calibration.confidence("a", 0.9, 0.7) == 0.7  # nothing seen: the profile's figure
    rng = np.random.default_rng(0)
    for _ in range(400):  # agreeing with probability = raw confidence, noisy
        score = float(rng.uniform())
        calibration.add("a", score, float(rng.uniform() < score))
    values = [calibration.confidence("a", s, 0.7) for s in np.linspace(0, 1, 11)]
    assert values == sorted(values)  # monotone in the raw confidence
    assert values[0] < 0.2 and values[-1] > 0.8
    assert calibration.confidence("a", None, 0.7) == pytest.approx(0.5, abs=0.08)
    few = Calibration()
    for _ in range(MIN_PAIRS - 1):
        few.add("b", 0.5, 1.0)
    assert few.confidence("b", 0.5, 0.3) == 0.3  # too few pairs: the profile's figure


def test_the_bucket_spends_the_spare_delay_on_the_least_confident() -> None:
    gate = Gate()
    gate.set({"a": 3.0}, spare_ms=1.0)  # one run per three frames
    rng = np.random.default_rng(1)
    confidences = rng.uniform(size=300)
    ran = [bool(gate.choose([(float(c), "a")])) for c in confidences]
    assert sum(ran) <= 300 // 3 + 1  # never more than the spare delay affords
    assert sum(ran) >= 300 // 3 * 0.8  # and it is not left unspent
    assert confidences[ran].mean() < confidences[~np.array(ran)].mean() - 0.2
    assert gate.choose([(0.0, "b")]) == []  # a model the gate does not hold


def test_no_spare_delay_runs_nothing() -> None:
    gate = Gate()
    gate.set({"a": 1.0}, spare_ms=-2.0)
    assert not any(gate.choose([(0.0, "a")]) for _ in range(10))
