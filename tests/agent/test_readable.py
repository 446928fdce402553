"""Every task kind's output reads as a person would say it: words, class names, label names,
rounded numbers, boxes in pixels where the image's size is known; and it is valid JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agent.readable import DEFAULT_DECIMALS, readable
from agent.sources.city import CAPTION_LEN, CAPTION_VOCAB, TRAFFIC
from links_tflite.tasks import TaskSpec

CAPTION = TaskSpec("sequence", 0, vocab_size=len(CAPTION_VOCAB), labels=CAPTION_VOCAB,
                   max_len=CAPTION_LEN)
TRAFFIC_TASK = TaskSpec("single_label", 3, labels=TRAFFIC)
WEATHER = TaskSpec("multi_label", 3, labels=("rain", "fog", "night"))
COUNT = TaskSpec("regression", 1)
BOX = TaskSpec("localization", 4)


def test_a_caption_reads_as_words_of_the_task_s_vocabulary() -> None:
    # the city caption the issue saw published as {"tokens": [3, 6, 10]}
    assert readable(CAPTION, np.array([3.0, 6.0, 10.0], np.float32)) == "morning clear quiet"
    assert readable(CAPTION, np.array([3.0, 0.0, 10.0])) == "morning"  # 0 ends it
    assert readable(CAPTION, np.array([0.0, 0.0, 0.0])) == ""
    assert readable(CAPTION, np.array([1.0, 4.0, 0.0])) == "afternoon"  # <bos> is a marker
    assert readable(CAPTION, np.array([3.0, 99.0, 0.0])) == "morning <99>"  # beyond the vocab


def test_a_sequence_without_a_vocabulary_reads_as_its_token_ids() -> None:
    spec = TaskSpec("sequence", 0, vocab_size=20, max_len=4)
    assert readable(spec, np.array([[5.0, 2.0, 0.0, 7.0]])) == [5, 2]


def test_single_label_is_the_class_name_else_its_index() -> None:
    assert readable(TRAFFIC_TASK, np.array([0.1, 0.7, 0.2], np.float32)) == "busy"
    unnamed = TaskSpec("single_label", 10)
    assert readable(unnamed, np.eye(10)[7]) == 7


def test_multi_label_is_the_names_of_the_labels_on() -> None:
    assert readable(WEATHER, np.array([0.9, 0.2, 0.5])) == ["rain", "night"]
    assert readable(WEATHER, np.array([0.1, 0.2, 0.3])) == []
    assert readable(TaskSpec("multi_label", 3), np.array([0.1, 0.6, 0.9])) == [1, 2]


def test_numbers_are_rounded_per_task() -> None:
    # the issue: a count published as [1.1675715446472168]
    assert readable(COUNT, np.array([1.1675715446472168], np.float32)) == 1.17
    assert DEFAULT_DECIMALS["regression"] == 2
    assert readable(COUNT, np.array([1.16757]), decimals=3) == 1.168  # [publish.per_model]
    whole = readable(COUNT, np.array([2.6]), decimals=0)
    assert whole == 3 and isinstance(whole, int)
    two = TaskSpec("regression", 2)
    assert readable(two, np.array([0.123456, 7.0])) == [0.12, 7.0]
    assert readable(two, np.array([np.nan, np.inf])) == [None, None]  # never NaN in JSON


def test_a_box_is_normalised_unless_the_image_size_is_known() -> None:
    box = np.array([0.12345, 0.25, 0.5, 0.7501], np.float32)
    assert readable(BOX, box) == [0.123, 0.25, 0.5, 0.75]
    pixels = readable(BOX, box, image_size=(640, 480))
    assert pixels == [79, 120, 320, 360] and all(isinstance(v, int) for v in pixels)
    assert readable(BOX, box, image_size=(640, 480), decimals=1) == [79.0, 120.0, 320.0, 360.0]
    assert readable(BOX, np.zeros(4)) is None  # the empty box (a gated link's "nothing")
    assert readable(BOX, np.array([0.5, 0.5, 0.4, 0.9])) is None  # no area
    assert readable(BOX, np.array([np.nan, 0.1, 0.5, 0.5])) is None  # never NaN in JSON


@pytest.mark.parametrize("spec", [CAPTION, TRAFFIC_TASK, WEATHER, COUNT, BOX],
                         ids=lambda s: s.kind)
def test_every_kind_is_json_and_does_not_keep_numpy_types(spec: TaskSpec) -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        value = rng.random(spec.output_width).astype(np.float32)
        if spec.kind == "sequence":
            value = rng.integers(0, len(CAPTION_VOCAB), spec.max_len).astype(np.float32)
        reading = readable(spec, value)
        assert json.loads(json.dumps(reading, allow_nan=False)) == reading
