"""Outputs become one message per frame, once, where the [publish] settings apply; per-model
topics and the retained latest value where a model's rules ask for them."""

from __future__ import annotations

from typing import Any

import numpy as np

from agent.config import PublishConfig
from agent.output import Output, Payloads, model_entries
from agent.sources import Frame
from agent.transport import Topics
from links_tflite.tasks import TaskSpec
from tests.support.contract import validate

SPECS = {
    "digit": TaskSpec(kind="single_label", dim=3, labels=("zero", "one", "two")),
    "count": TaskSpec(kind="regression", dim=1),
}
FRAME = Frame(frame_id=7, ts=1.5, modalities={})
OUTPUTS = [
    Output("digit", np.array([0.1, 0.8, 0.1], np.float32), "executed", ("digit",), 1.0, 0.5),
    Output("count", np.array([2.0], np.float32), "predicted", ("digit",), 0.75, 0.01),
]


def test_a_frame_becomes_one_valid_message_holding_every_output() -> None:
    message = Payloads().make(FRAME, OUTPUTS, PublishConfig(), SPECS)
    assert message is not None
    validate("frame", message)
    assert list(message["outputs"]) == ["digit", "count"] and message["seq"] == 1
    digit = message["outputs"]["digit"]
    assert digit["decoded"] == "one" and digit["provenance"] == "executed"
    assert digit["sources"] == ["digit"] and message["frame_id"] == 7
    assert message["camera"] == "0" and message["stream_ts"] is None  # one unnamed source
    assert message["ts"] > 1.7e9, "ts is the wall clock, not the stream's"
    for entry in model_entries(message):
        validate("output", entry)


def test_a_message_names_its_frame_s_camera_and_carries_its_stream_time() -> None:
    frame = Frame(frame_id=3, ts=2.0, modalities={}, camera=1, stream_ts=0.4)
    message = Payloads(("gate", "yard"), first_seq=41).make(frame, OUTPUTS, PublishConfig(),
                                                            SPECS)
    assert message is not None
    assert message["camera"] == "yard" and message["stream_ts"] == 0.4
    assert message["seq"] == 41, "seq goes on from where the outbox left it"
    validate("frame", message)


def test_a_withheld_output_has_a_null_value_and_says_why() -> None:
    withheld = Output("count", np.array([2.0], np.float32), "predicted", ("digit",), 0.2, 0.01,
                      withheld="low agreement")
    message = Payloads().make(FRAME, [OUTPUTS[0], withheld], PublishConfig(), SPECS)
    assert message is not None
    validate("frame", message)
    entry = message["outputs"]["count"]
    assert entry["value"] is None and entry["withheld"] == "low agreement"
    assert "decoded" not in entry and entry["est_agreement"] == 0.2


def test_unpublished_models_are_left_out_and_decoding_is_only_done_when_on(
        monkeypatch) -> None:
    decoded: list[str] = []
    import agent.output

    real = agent.output.readable

    def counting(spec: TaskSpec, numbers: Any, **options: Any) -> object:
        decoded.append(spec.kind)
        return real(spec, numbers, **options)

    monkeypatch.setattr(agent.output, "readable", counting)
    payloads = Payloads()
    only_count = payloads.make(FRAME, OUTPUTS, PublishConfig(models=["count"]), SPECS)
    assert only_count is not None and list(only_count["outputs"]) == ["count"]
    assert decoded == ["regression"]
    plain = payloads.make(FRAME, OUTPUTS, PublishConfig(decoded=False), SPECS)
    assert plain is not None and decoded == ["regression"]
    assert all("decoded" not in e for e in plain["outputs"].values())
    assert payloads.make(FRAME, OUTPUTS, PublishConfig(models=[]), SPECS) is None
    assert [only_count["seq"], plain["seq"]] == [1, 2]  # one per message made


class Recorder:
    """What `Payloads.send` hands a publisher."""

    def __init__(self) -> None:
        self.topics = Topics("mlink", "box")
        self.sent: list[tuple[str, str, int, bool]] = []  # how, topic, qos, retain

    def publish(self, topic: str, payload: Any, qos: int | None = None, retain: bool = False,
                key: int | None = None) -> None:
        self.sent.append(("outbox" if not retain else "retained", topic, qos or 0, retain))

    def publish_now(self, topic: str, payload: Any, qos: int = 0) -> None:
        self.sent.append(("now", topic, qos, False))


def test_per_model_topics_and_the_latest_value_only_where_asked() -> None:
    message = Payloads().make(FRAME, OUTPUTS, PublishConfig(), SPECS)
    assert message is not None
    plain = Recorder()
    Payloads.send(message, plain, PublishConfig())  # type: ignore[arg-type]
    assert plain.sent == [("outbox", "mlink/box/frames/0", 1, False)], "off by default"
    rules = PublishConfig.model_validate({"per_model": {
        "digit": {"topic": "qos1", "last": True}, "count": {"topic": "qos0"}}})
    asked = Recorder()
    Payloads.send(message, asked, rules)  # type: ignore[arg-type]
    assert asked.sent == [
        ("outbox", "mlink/box/frames/0", 1, False),
        ("outbox", "mlink/box/models/digit/output", 1, False),
        ("retained", "mlink/box/models/digit/last", 0, True),
        ("now", "mlink/box/models/count/output", 0, False),
    ]
