"""Outputs become messages once, where the [publish] settings apply."""

from __future__ import annotations

import numpy as np

from agent.config import PublishConfig
from agent.output import Output, Payloads
from agent.sources import Frame
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


def test_every_output_becomes_a_valid_message_with_its_decoded_value() -> None:
    payloads = Payloads().make(FRAME, OUTPUTS, PublishConfig(), SPECS)
    assert [p["model"] for p in payloads] == ["digit", "count"]
    assert [p["seq"] for p in payloads] == [1, 2]
    digit = payloads[0]
    assert digit["decoded"] == {"label": 1, "name": "one"} and digit["provenance"] == "executed"
    assert digit["sources"] == ["digit"] and digit["frame_id"] == 7
    for payload in payloads:
        validate("output", payload)
        assert payload["camera"] == "0" and payload["stream_ts"] is None  # one unnamed source


def test_a_message_names_its_frame_s_camera_and_carries_its_stream_time() -> None:
    frame = Frame(frame_id=3, ts=2.0, modalities={}, camera=1, stream_ts=0.4)
    payloads = Payloads(("gate", "yard")).make(frame, OUTPUTS, PublishConfig(), SPECS)
    assert {p["camera"] for p in payloads} == {"yard"}
    assert {p["stream_ts"] for p in payloads} == {0.4}
    for payload in payloads:
        validate("output", payload)


def test_unpublished_models_make_no_message_and_decoding_is_only_done_when_on(
        monkeypatch) -> None:
    decoded: list[str] = []
    import agent.output

    real = agent.output.decode

    def counting(spec: TaskSpec, numbers: list[float]) -> object:
        decoded.append(spec.kind)
        return real(spec, numbers)

    monkeypatch.setattr(agent.output, "decode", counting)
    payloads = Payloads()
    only_count = payloads.make(FRAME, OUTPUTS, PublishConfig(models=["count"]), SPECS)
    assert [p["model"] for p in only_count] == ["count"] and decoded == ["regression"]
    plain = payloads.make(FRAME, OUTPUTS, PublishConfig(decoded=False), SPECS)
    assert all("decoded" not in p for p in plain) and decoded == ["regression"]
    assert [p["seq"] for p in only_count + plain] == [1, 2, 3]  # one per message sent
