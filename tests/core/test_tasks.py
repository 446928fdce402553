import numpy as np
import pytest

from links_tflite.tasks import TaskSpec, TaskSpecError, activate, decode


def test_defaults_follow_the_kind() -> None:
    spec = TaskSpec("multi_label", 4)
    assert spec.activation == "sigmoid"
    assert spec.measure == "label_agreement"
    assert TaskSpec("sequence", 0, vocab_size=30, max_len=8).output_width == 8


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "box", "dim": 4}, "kind"),
        ({"kind": "localization", "dim": 3}, "4 numbers"),
        ({"kind": "single_label", "dim": 1}, "at least 2"),
        ({"kind": "sequence", "dim": 0}, "vocab_size"),
        ({"kind": "regression", "dim": 1, "tolerance": -1.0}, "tolerance"),
        ({"kind": "regression", "dim": 2, "measure": "anything"},
         r"measure: 'anything' is not a regression measure; one of within_tolerance, "
         r"all_within_tolerance"),
        ({"kind": "single_label", "dim": 2, "measure": "iou"}, "one of argmax_equal"),
    ],
)
def test_bad_specs_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(TaskSpecError, match=message):
        TaskSpec(**kwargs)


def test_every_kind_defaults_to_its_first_measure() -> None:
    from links_tflite.tasks import DEFAULT_MEASURE, MEASURES

    assert {kind: names[0] for kind, names in MEASURES.items()} == DEFAULT_MEASURE
    assert TaskSpec("regression", 2).measure == DEFAULT_MEASURE["regression"]
    assert TaskSpec("regression", 2, measure="all_within_tolerance").measure == \
        "all_within_tolerance"


def test_round_trip_and_unknown_keys() -> None:
    spec = TaskSpec("single_label", 2, labels=("even", "odd"))
    assert TaskSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(TaskSpecError, match=r"task: unknown keys \['colour'\]"):
        TaskSpec.from_dict({**spec.to_dict(), "colour": "red"})


def test_activate() -> None:
    probs = activate("softmax", np.array([[0.0, np.log(3.0)]]))
    np.testing.assert_allclose(probs, [[0.25, 0.75]], rtol=1e-6)
    np.testing.assert_allclose(activate("sigmoid", np.array([0.0])), [0.5])
    with pytest.raises(ValueError, match="unknown activation"):
        activate("tanh", np.zeros(2))


def test_decode() -> None:
    spec = TaskSpec("single_label", 2, labels=("even", "odd"))
    assert decode(spec, np.array([0.2, 0.8])) == {"label": 1, "name": "odd"}
    assert decode(TaskSpec("multi_label", 3), np.array([0.9, 0.1, 0.5])) == {"labels": [0, 2]}
    assert decode(TaskSpec("sequence", 0, vocab_size=9, max_len=4), np.array([3, 5, 0, 7])) == {
        "tokens": [3, 5]
    }
