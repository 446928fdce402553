"""The per-model publishing rules: low-agreement outputs withheld or dropped (never an executed
one), at most one output per interval, publish-on-change per task kind; every output left out
counted. End to end on the committed fixture: a high min_agreement withholds predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.config import ModelPublishConfig, PublishConfig, load_config
from agent.output import Output
from agent.publishrules import LOW_AGREEMENT, PublishRules
from agent.scheduler import Agent
from agent.selection import Selection
from links_tflite.tasks import TaskSpec
from tests.agent.test_scheduler_failures import python_config
from tests.support.contract import validate

SPECS = {
    "cls": TaskSpec("single_label", 3, labels=("a", "b", "c")),
    "tags": TaskSpec("multi_label", 3),
    "count": TaskSpec("regression", 1),
    "box": TaskSpec("localization", 4),
    "words": TaskSpec("sequence", 0, vocab_size=8, max_len=3),
}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def out(model: str, value: list[float], provenance: str = "predicted",
        agreement: float = 0.5) -> Output:
    return Output(model, np.array(value, np.float32), provenance,  # type: ignore[arg-type]
                  (model,), agreement, 0.1)


def rules(clock: Clock | None = None, **per_model: ModelPublishConfig) -> PublishRules:
    return PublishRules(PublishConfig(per_model=per_model), clock or Clock())


def test_without_rules_every_output_passes_untouched() -> None:
    outputs = [out("cls", [0.1, 0.8, 0.1]), out("count", [2.0])]
    kept = rules().apply(outputs, SPECS)
    assert kept == outputs and all(k is o for k, o in zip(kept, outputs, strict=True))


def test_low_agreement_is_withheld_or_dropped_but_never_an_executed_output() -> None:
    publish = rules(cls=ModelPublishConfig(min_agreement=0.6),
                    count=ModelPublishConfig(min_agreement=0.6, below_min_agreement="drop"))
    outputs = [out("cls", [0.1, 0.8, 0.1], agreement=0.59),
               out("count", [2.0], "prior", agreement=0.3),
               out("cls", [0.1, 0.8, 0.1], "executed", agreement=1.0),
               out("count", [2.0], "predicted", agreement=0.6)]  # at the threshold: published
    kept = publish.apply(outputs, SPECS)
    assert [(k.model, k.provenance, k.withheld) for k in kept] == [
        ("cls", "predicted", LOW_AGREEMENT), ("cls", "executed", None),
        ("count", "predicted", None)]
    assert outputs[0].withheld is None  # the loop's own output is not changed
    assert publish.counts()["withheld"] == {"cls": 1}
    assert publish.counts()["dropped"] == {"count": 1}
    assert publish.counts()["too_soon"] == publish.counts()["unchanged"] == {}


def test_at_most_one_output_per_interval_per_camera() -> None:
    clock = Clock()
    publish = rules(clock, count=ModelPublishConfig(min_interval_s=2.0))
    sent = []
    for step in range(10):  # 0.5 s apart: published at 0, 2, 4 s
        clock.now = 100.0 + step * 0.5
        sent += [clock.now for _ in publish.apply([out("count", [float(step)])], SPECS)]
    assert sent == [100.0, 102.0, 104.0]
    assert publish.counts()["too_soon"] == {"count": 7}
    # another camera has its own interval
    assert len(publish.apply([out("count", [1.0])], SPECS, camera=1)) == 1


@pytest.mark.parametrize(("model", "values", "tolerance", "published"), [
    ("cls", [[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.1, 0.2, 0.7], [0.2, 0.1, 0.7]], 0.0,
     [True, False, True, False]),  # the class, not the probabilities
    ("tags", [[0.9, 0.1, 0.4], [0.8, 0.2, 0.45], [0.8, 0.2, 0.55]], 0.0,
     [True, False, True]),  # a label flipping at 0.5
    ("count", [[1.0], [1.2], [1.4], [1.45], [0.9]], 0.3, [True, False, True, False, True]),
    ("box", [[0.1, 0.1, 0.5, 0.5], [0.12, 0.1, 0.5, 0.5], [0.1, 0.1, 0.5, 0.7]], 0.05,
     [True, False, True]),  # the largest coordinate's move
    ("words", [[3, 6, 0], [3, 6, 0], [3, 6, 2], [3, 0, 5], [3, 0, 7]], 0.0,
     [True, False, True, True, False]),  # tokens after the end do not count
])
def test_on_change_publishes_only_what_changed_per_task_kind(
        model: str, values: list[list[float]], tolerance: float, published: list[bool]) -> None:
    publish = rules(**{model: ModelPublishConfig(on_change=True, change_tolerance=tolerance)})
    sent = [bool(publish.apply([out(model, v)], SPECS)) for v in values]
    assert sent == published
    assert publish.counts()["unchanged"] == {model: published.count(False)}


def test_on_change_compares_with_the_last_published_not_the_last_seen() -> None:
    publish = rules(count=ModelPublishConfig(on_change=True, change_tolerance=0.5))
    sent = [bool(publish.apply([out("count", [v])], SPECS)) for v in (1.0, 1.3, 1.6, 1.9)]
    assert sent == [True, False, True, False]  # a slow drift is published, step by step


def test_a_withheld_output_is_a_change_once() -> None:
    publish = rules(cls=ModelPublishConfig(on_change=True, min_agreement=0.5))
    agreements = (0.9, 0.2, 0.1, 0.9)  # value, withheld, withheld again, value again
    sent = [[k.withheld for k in publish.apply([out("cls", [0.1, 0.8, 0.1], agreement=a)],
                                                SPECS)] for a in agreements]
    assert sent == [[None], [LOW_AGREEMENT], [], [None]]
    assert publish.counts()["withheld"] == {"cls": 1}  # counted once, under one reason
    assert publish.counts()["unchanged"] == {"cls": 1}


def test_new_settings_apply_from_the_next_frame() -> None:
    publish = rules()
    assert publish.apply([out("cls", [0.1, 0.8, 0.1])], SPECS)[0].withheld is None
    publish.settings = PublishConfig(per_model={"cls": ModelPublishConfig(min_agreement=0.9)})
    assert publish.apply([out("cls", [0.1, 0.8, 0.1])], SPECS)[0].withheld == LOW_AGREEMENT


def test_a_high_min_agreement_withholds_the_predicted_outputs_end_to_end(
        digits_fixture, models, tmp_path: Path) -> None:
    """The loop hands the payload builder the outputs the rules let out: with `digit` run and
    the others predicted, a min_agreement above every prediction's withholds them all."""
    path = python_config(tmp_path, digits_fixture.root)
    path.write_text(path.read_text() + "\n[publish.per_model.parity]\nmin_agreement = 0.999\n"
                    "[publish.per_model.inkbox]\nmin_agreement = 0.999\n"
                    'below_min_agreement = "drop"\n')
    agent = Agent.from_config(load_config(path))
    handed: list[Output] = []
    make = agent.payloads.make

    def spy(frame, outputs, settings, specs):  # type: ignore[no-untyped-def]
        handed.extend(outputs)
        return make(frame, outputs, settings, specs)

    agent.payloads.make = spy  # type: ignore[method-assign]
    stream = agent.start()
    agent.apply(Selection("test", frozenset({"digit"}), ("parity", "inkbox"), {}, 0.0, True))
    for _ in range(3):
        agent.process(next(stream))
    agent.close()
    by_model = {m: [o for o in handed if o.model == m] for m in ("digit", "parity", "inkbox")}
    assert [o.withheld for o in by_model["digit"]] == [None] * 3  # executed: never withheld
    assert len(by_model["parity"]) == 3
    assert all(o.provenance == "predicted" and o.withheld == LOW_AGREEMENT
               for o in by_model["parity"])
    assert by_model["inkbox"] == []  # dropped
    status = agent.status("running")
    validate("status", status)
    assert status["publishing"] == {"withheld": {"parity": 3}, "dropped": {"inkbox": 3},
                                    "too_soon": {}, "unchanged": {}}
    assert status["counters"]["publish_withheld"] == 3  # type: ignore[index]
    assert status["counters"]["publish_dropped"] == 3  # type: ignore[index]
    assert status["counters"]["predicted"] == 6  # type: ignore[index]  # made, then filtered
