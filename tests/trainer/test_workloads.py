"""Workloads yield frames and ground truth of the documented shapes, seeded."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agent.sources.city import (
    CAPTION_LEN,
    SIZE,
    CityGenerator,
    start_index,
)
from offline_trainer.workloads import get_workload
from offline_trainer.workloads.city import tasks as city_tasks
from offline_trainer.workloads.digits import tasks as digits_tasks


def test_digits_shapes_and_seeds() -> None:
    workload = get_workload("digits")
    splits = workload.load(seed=0)
    specs = digits_tasks()
    assert {r.model_id for r in workload.recipes()} == set(specs)
    assert {spec.kind for spec in specs.values()} == {
        "single_label", "multi_label", "localization", "regression", "sequence"}
    for part in (splits.zoo, splits.recording, splits.stream):
        assert part.inputs["image"].shape[1:] == (8, 8)
        for model_id, spec in specs.items():
            assert part.ground_truth[model_id].shape == (len(part), spec.output_width)
    total = len(splits.zoo) + len(splits.recording) + len(splits.stream)
    assert total == 1797
    again = workload.load(seed=0).stream.inputs["image"]
    other = workload.load(seed=1).stream.inputs["image"]
    np.testing.assert_array_equal(again, splits.stream.inputs["image"])
    assert not np.array_equal(other, again)


def test_digits_derived_labels_by_hand() -> None:
    from agent.sources.digits import ground_truth, vocabulary

    raw = np.zeros((2, 8, 8))
    raw[0, 2:5, 3:6] = 16  # a 3x3 inked square at rows 2-4, cols 3-5
    truth = ground_truth(raw, np.array([8, 4]))
    np.testing.assert_allclose(truth["inkbox"][0], [3 / 8, 2 / 8, 6 / 8, 5 / 8])
    np.testing.assert_array_equal(truth["inkbox"][1], [0, 0, 0, 0])  # no ink: empty box
    assert truth["inkmass"][0, 0] == pytest.approx(9.0)
    np.testing.assert_array_equal(truth["strokes"], [[1, 0, 0, 1], [0, 1, 1, 0]])  # 8 and 4
    vocab = vocabulary(("zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                        "nine"))
    assert "".join(vocab[int(t)] for t in truth["name"][0] if t) == "eight"
    roman_vocab = vocabulary(("N", "I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX"))
    assert "".join(roman_vocab[int(t)] for t in truth["roman"][1] if t) == "IV"


def test_city_frames_and_truth_shapes() -> None:
    generator = CityGenerator(seed=0, cameras=4)
    assert len(generator) == 2 * 86_400 * 4
    image, truth, ts, camera = generator.frame(start_index(0, 8.0, 4) + 2)
    assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.float32
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert camera == 2 and ts == 8 * 3600
    for model_id, spec in city_tasks().items():
        assert truth[model_id].shape == (spec.output_width,)
    assert truth["caption"].shape == (CAPTION_LEN,)
    with pytest.raises(IndexError):
        generator.frame(len(generator))


def test_city_seeds() -> None:
    index = start_index(0, 12.0, 4)
    a, b, c = (CityGenerator(seed).frame(index)[0] for seed in (3, 3, 4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def rates_over(generator: CityGenerator, day: int, hour: float, n: int = 200) -> np.ndarray:
    start = start_index(day, hour, generator.cameras)
    _, truth, _, _ = generator.batch(np.arange(start, start + n * 15, 15))
    return np.stack([truth["persons"][:, 0], truth["vehicles"][:, 0]], axis=1)


def test_city_rush_hour_daylight_and_independent_counts() -> None:
    generator = CityGenerator(seed=0)
    rush, night = rates_over(generator, 0, 8.0), rates_over(generator, 0, 3.0)
    assert rush[:, 1].mean() > 3 * max(night[:, 1].mean(), 0.05)
    noon = generator.frame(start_index(0, 12.0, 4))[0].mean()
    midnight = generator.frame(start_index(0, 0.0, 4))[0].mean()
    assert noon > 2 * midnight
    # correlated through time and place, but neither count is a function of the other
    _, truth, _, _ = generator.batch(np.random.default_rng(0).choice(len(generator), 1500))
    persons, vehicles = truth["persons"][:, 0], truth["vehicles"][:, 0]
    assert 0.05 < np.corrcoef(persons, vehicles)[0, 1] < 0.9
    busy = vehicles == 2
    assert len(np.unique(persons[busy])) > 2
    assert len(np.unique(vehicles[persons == 1])) > 2


def beats_trivial(card: dict) -> bool:
    """A clear margin: at least 15% fewer disagreements with the truth than the best constant
    answer (majority class, mean or empty box, mean count, most common sequence)."""
    return 1.0 - card["ground_truth_agreement"] <= 0.85 * (1.0 - card["trivial_agreement"])


def test_zoo_models_beat_trivial_predictors(digits_build) -> None:
    cards = {p.stem: json.loads(p.read_text()) for p in digits_build.root.glob("models/*.json")}
    assert set(cards) == set(digits_tasks())
    for card in cards.values():
        assert beats_trivial(card), card
        assert card["delay_ms"] > 0 and card["memory_mb"] is not None


def test_digits_cost_spread(digits_build) -> None:
    cards = [json.loads(p.read_text()) for p in digits_build.root.glob("models/*.json")]
    sizes = sorted(c["file_bytes"] for c in cards)
    assert sizes[-1] >= 5 * sizes[0]


def test_city_zoo_models_beat_trivial_predictors(city_zoo) -> None:
    """The city zoo, trained on a reduced sample so that the suite stays short."""
    cards = {p.stem: json.loads(p.read_text()) for p in city_zoo.glob("models/*.json")}
    assert set(cards) == set(city_tasks())
    for card in cards.values():
        assert beats_trivial(card), card
    delays = sorted(c["delay_ms"] for c in cards.values())
    sizes = sorted(c["file_bytes"] for c in cards.values())
    assert sizes[-1] >= 5 * sizes[0]
    assert delays[-1] >= 3 * delays[0]  # measured: a loose bound, timings are noisy


@pytest.mark.trainer  # builds the Keras models
def test_city_edge_size_models() -> None:
    """`--model-size edge`: the same tasks, every model a real edge model's size; options
    a workload does not take are refused by name."""
    small, edge = get_workload("city"), get_workload("city", model_size="edge")
    assert [r.model_id for r in edge.recipes()] == [r.model_id for r in small.recipes()]
    assert edge.sizes[0] < small.sizes[0]  # fewer zoo frames: the build stays minutes
    recipe = next(r for r in edge.recipes() if r.model_id == "persons")
    assert recipe.build((SIZE, SIZE, 3)).count_params() > 5_000_000
    assert next(r for r in small.recipes() if r.model_id == "persons").build(
        (SIZE, SIZE, 3)).count_params() < 1_000_000
    with pytest.raises(ValueError, match="model size 'huge'"):
        get_workload("city", model_size="huge")
    with pytest.raises(ValueError, match="'digits' does not take \\['model_size'\\]"):
        get_workload("digits", model_size="edge")
