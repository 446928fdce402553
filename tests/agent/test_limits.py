"""Every remote value bounded before anything changes (agent/limits.py), in process: NaN and
Infinity anywhere, numbers beyond +-2**53, 5,000-digit numbers, deep nesting, huge or odd
versions, ResponseTopics outside the agent's reply namespace, oversized CorrelationData. Each
refusal is answered, names what is wrong, and leaves the state exactly as it was (config in
force, version, state directory). Replay protection survives the documented reset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.limits import (
    MAX_DEPTH,
    LimitError,
    RateLimiter,
    check_numbers,
    check_response_topic,
    parse_json,
)
from agent.security import Verifier, sign
from tests.agent.test_fuzz_control import TOPICS, Rig

KEY = b"the box's own key, 32 bytes long"


def _props(response_topic: str | None = None, correlation: bytes | None = None) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    if response_topic is not None:
        props.ResponseTopic = response_topic
    if correlation is not None:
        props.CorrelationData = correlation
    return props


def _refused(rig: Rig, topic: str, payload: bytes, paths: set[str], words: str = "",
             properties: Properties | None = None) -> dict[str, Any]:
    before = rig.snapshot()
    answer = rig.send(topic, payload, properties=properties)
    assert answer["status"] == "error", answer
    assert {e["path"] for e in answer["errors"]} & paths, answer
    assert words.lower() in json.dumps(answer["errors"]).lower(), (words, answer)
    assert rig.snapshot() == before, "a refusal changed the state"
    json.dumps(answer, allow_nan=False)
    return answer


DEEP = b'{"version": 9, "budget": ' + b"[" * 5000 + b"]" * 5000 + b"}"
CONFIG_REFUSALS = [
    (b'{"version": 9, "profiling": {"period_s": Infinity}}', {"profiling.period_s"}, "finite"),
    (b'{"version": 9, "profiling": {"period_s": 1e400}}', {"profiling.period_s"}, "finite"),
    (b'{"version": 9, "profiling": {"period_s": 1e12}}', {"profiling.period_s"}, ""),
    (b'{"version": 9, "budget": {"memory_mb": NaN}}', {"budget.memory_mb"}, "finite"),
    (b'{"version": 9, "budget": {"delay_ms": -Infinity}}', {"budget.delay_ms"}, "finite"),
    (b'{"version": 9, "budget": {"memory_mb": 1e300}}', {"budget.memory_mb"}, "range"),
    (b'{"version": 9, "profiling": {"period_frames": 99999999999999999999}}',
     {"profiling.period_frames"}, "2**53"),
    (b'{"version": ' + b"9" * 4300 + b', "budget": {"memory_mb": 2}}', {"version"}, "digits"),
    (b'{"version": 9, "budget": {"memory_mb": 2.' + b"5" * 5000 + b"}}", {"budget.memory_mb"},
     "characters"),
    (b'{"version": 9007199254740993, "budget": {"memory_mb": 2}}', {"version"}, "range"),
    (b'{"version": 9.0, "budget": {"memory_mb": 2}}', {"version"}, "integer"),
    (DEEP, {""}, "nested deeper"),
    (b'{"version": 9, "x": "\\\\' + b'[' * 100 + b'"}', {"x"}, "cannot be set"),
    (b'{"version": 9, "budget": ' + b'{"a": ' * (MAX_DEPTH + 1) + b"1" + b"}" * (MAX_DEPTH + 2),
     {""}, "nested deeper"),
]


@pytest.mark.parametrize(("payload", "paths", "words"), CONFIG_REFUSALS)
def test_config_refusals_change_nothing(tmp_path: Path, payload: bytes, paths: set[str],
                                        words: str) -> None:
    _refused(Rig(tmp_path), TOPICS.config_set, payload, paths, words)


def test_infinity_is_never_held_in_memory(tmp_path: Path) -> None:
    """The issue's crash: `period_s: Infinity` was answered `error` but stayed in force, and
    the next status publish died on it."""
    rig = Rig(tmp_path)
    for value in (b"Infinity", b"1e999", b'"inf"'):
        _refused(rig, TOPICS.config_set,
                 b'{"version": 3, "profiling": {"period_s": ' + value + b"}}",
                 {"", "profiling.period_s"})
        assert rig.agent.config.profiling.period_s == 0.0
    answer = rig.send(TOPICS.config_set, b'{"version": 3, "profiling": {"period_s": 30}}')
    assert answer["status"] == "ok" and rig.agent.config.profiling.period_s == 30.0


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_budgets_say_so(tmp_path: Path, value: str) -> None:
    answer = _refused(Rig(tmp_path), TOPICS.config_set,
                      f'{{"version": 3, "budget": {{"memory_mb": {value}}}}}'.encode(),
                      {"budget.memory_mb"})
    assert "finite" in answer["errors"][0]["message"], answer


def test_the_config_model_refuses_non_finite_numbers(tmp_path: Path) -> None:
    from agent.control import RequestError, apply_patch

    rig = Rig(tmp_path)
    for patch in ({"budget": {"memory_mb": float("nan")}},
                  {"profiling": {"period_s": float("inf")}}):
        with pytest.raises(RequestError, match="finite"):
            apply_patch(rig.config, patch)


@pytest.mark.parametrize("topic", [TOPICS.command("reselect"), TOPICS.command("bundle"),
                                   TOPICS.command("nope")])
def test_command_refusals_change_nothing(tmp_path: Path, topic: str) -> None:
    rig = Rig(tmp_path)
    _refused(rig, topic, DEEP, {""}, "nested deeper")
    _refused(rig, topic, b'{"transaction": "t", "chunks": 1e999}', {"chunks"}, "finite")
    _refused(rig, topic, b'{"transaction": "t", "chunk": ' + b"7" * 5000 + b"}", {"chunk"},
             "digits")
    _refused(rig, topic, b'{"transaction": "t", "chunk": 18446744073709551616}', {"chunk"},
             "2**53")


OWN = TOPICS.root
BAD_REPLY_TOPICS = [
    ("mlink/other-box/config/set", "not under"),
    (f"{OWN}/config/set", "own request"),
    (f"{OWN}/cmd/bundle", "own request"),
    (f"{OWN}/models/digit/output", "not under"),
    (f"{OWN}/status", "not under"),
    (f"{OWN}/availability", "not under"),
    (f"{OWN}/config/state", "not under"),
    ("homeassistant/device/box-1/config", "not under"),
    (f"{OWN}/reply/" + "/".join(["x"] * 40), "levels"),
    (f"{OWN}/reply/" + "x" * 300, "bytes"),
    (f"{OWN}/reply/#", "wildcards"),
    ("$SYS/broker/x", "wildcards"),
]


@pytest.mark.parametrize(("reply_topic", "words"), BAD_REPLY_TOPICS)
def test_response_topics_outside_the_namespace_are_refused(tmp_path: Path, reply_topic: str,
                                                           words: str) -> None:
    rig = Rig(tmp_path)
    for topic, payload in ((TOPICS.config_set, b'{"version": 4, "budget": {"memory_mb": 2}}'),
                           (TOPICS.command("reselect"), b'{"transaction": "r"}')):
        _refused(rig, topic, payload, {"ResponseTopic"}, words,
                 properties=_props(reply_topic, b"c-1"))
        sent_to, _ = rig.publisher.responses[-1]
        default = TOPICS.config_response if topic == TOPICS.config_set \
            else TOPICS.command_response("reselect")
        assert sent_to == default, "refused: answered on the agent's own response topic"
        assert rig.publisher.correlations[-1] == b"c-1"
    assert rig.agent.config == rig.config


def test_response_topics_inside_the_namespace_or_allowed(tmp_path: Path) -> None:
    rig = Rig(tmp_path, extra='[control]\nresponse_topics = ["replies/+/box-1"]\n')
    for reply_topic in (f"{OWN}/reply/op-1", "replies/op/box-1"):
        answer = rig.send(TOPICS.command("reselect"), b'{"transaction": "r"}',
                          properties=_props(reply_topic, b"c"))
        assert answer["status"] == "ok", answer
        assert rig.publisher.responses[-1][0] == reply_topic
    _refused(rig, TOPICS.command("reselect"), b"{}", {"ResponseTopic"},
             properties=_props("replies/op/other-box"))
    _refused(rig, TOPICS.command("reselect"), b"{}", {"CorrelationData"}, "longer",
             properties=_props(f"{OWN}/reply/x", b"c" * 1000))


def test_unsigned_requests_on_a_signing_agent_get_no_foreign_reply(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.control.verifier = Verifier(KEY, required=True)
    for reply_topic in ("mlink/other-box/config/set", f"{OWN}/reply/" + "/".join(["a"] * 500)):
        _refused(rig, TOPICS.config_set, b'{"version": 4, "budget": {"memory_mb": 2}}',
                 {"ResponseTopic", "signature"}, properties=_props(reply_topic))
        assert rig.publisher.responses[-1][0] == TOPICS.config_response
    # a signed envelope whose inner request is deeply nested or holds huge numbers
    for inner in ('{"version": 4, "budget": ' + "[" * 100 + "]" * 100 + "}",
                  '{"version": 4, "budget": {"memory_mb": 1' + "0" * 5000 + "}}"):
        _refused(rig, TOPICS.config_set, sign(KEY, TOPICS.config_set, inner), {"signed"})


def test_replay_after_the_documented_reset_is_refused(tmp_path: Path) -> None:
    """Deleting config.json returns the box to its config file, but the highest version ever
    in force is kept apart (version-floor.json): a captured signed request stays stale."""
    rig = Rig(tmp_path)
    rig.control.verifier = Verifier(KEY, required=True)
    captured = sign(KEY, TOPICS.config_set, {"transaction": "t5", "version": 5,
                                             "budget": {"memory_mb": 2.0}})
    assert rig.send(TOPICS.config_set, captured)["status"] == "ok"
    rig.store.config_file.unlink()  # the documented reset (docs/mqtt.md)
    again = Rig(tmp_path)
    again.control.verifier = Verifier(KEY, required=True)
    assert again.agent.config.budget.memory_mb == 3.5, "the file's config after the reset"
    assert again.control.version == 5, "the version continues from the floor"
    answer = _refused(again, TOPICS.config_set, captured, {"version"}, "stale")
    assert answer["version"] == 5
    fresh = sign(KEY, TOPICS.config_set, {"transaction": "t6", "version": 6,
                                          "budget": {"memory_mb": 2.5}})
    assert again.send(TOPICS.config_set, fresh)["status"] == "ok"


def test_a_tampered_state_file_is_not_trusted(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.store.config_file.write_text('{"version": ' + "9" * 4300 + ', "overrides": {}}')
    again = Rig(tmp_path)
    assert again.control.version == 0 and again.store.overrides == {}
    rig.store.floor_file.write_text('{"highest_version": 1e999}')
    assert Rig(tmp_path).control.version == 0
    answer = again.send(TOPICS.config_set, b'{"version": 1, "budget": {"memory_mb": 2}}')
    assert answer["status"] == "ok", answer


def test_parse_bounds() -> None:
    assert parse_json(b'{"a": [1, 2.5, "x\\\\[\\""]}', 100) == {"a": [1, 2.5, 'x\\["']}
    for payload, words in ((b"[" * 40 + b"]" * 40, "nested"), (b"1" * 50, "digits"),
                           (b"NaN", "finite"), (b"-Infinity", "finite"),
                           (b"1e400", "finite"), (b"\xff", "UTF-8"), (b"{", "not valid JSON"),
                           (b" " * 200, "larger")):
        with pytest.raises(LimitError, match=words):
            parse_json(payload, 100)
    assert check_numbers({"a": [1, 2**53], "b": 1.5}) == []
    assert [p for p, _ in check_numbers({"a": [1, 2**53 + 1], "b": {"c": -1e16}})] == \
        ["a.1", "b.c"]
    assert check_response_topic("r/x", "mlink/b", ("r/+",), ()) is None


def test_rate_limit_per_topic() -> None:
    limiter = RateLimiter(rate=2.0, burst=3)
    assert [limiter.allow("a", now=0.0) for _ in range(5)] == [True] * 3 + [False] * 2
    assert limiter.allow("b", now=0.0), "topics have their own buckets"
    assert limiter.allow("a", now=0.5) and not limiter.allow("a", now=0.5)
    assert limiter.limited == {"a": 3}


def test_requests_beyond_the_rate_are_dropped_and_counted(tmp_path: Path) -> None:
    import paho.mqtt.client as mqtt

    rig = Rig(tmp_path, extra="[control]\nrate_per_s = 1\nburst = 5\n")
    for name in ("reselect", "nope-1", "nope-2"):
        for _ in range(10):
            message = mqtt.MQTTMessage(topic=TOPICS.command(name).encode())
            message.payload = b"{}"
            rig.control._enqueue(message)
    stats = rig.control.stats()
    assert rig.control._queue.qsize() == 10, "5 per bucket; unknown names share one"
    assert stats["rate_limited"] == 20
    assert stats["rate_limited_by_topic"] == {TOPICS.command("reselect"): 5,
                                              TOPICS.command("<unknown>"): 15}


_LEAVES = (st.none() | st.booleans() | st.integers(-(2**53), 2**53)
           | st.floats(allow_nan=False, allow_infinity=False, width=64).filter(
               lambda f: abs(f) <= 2**53) | st.text(max_size=8))
_VALUES = st.recursive(_LEAVES, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=20)


@settings(max_examples=400, deadline=None, database=None, derandomize=True)
@given(payload=st.binary(max_size=300) | st.text(alphabet='[]{}"\\:,0123456789.eE-+ aNInfity',
                                                 max_size=120).map(str.encode))
def test_parse_json_only_ever_refuses_with_a_message(payload: bytes) -> None:
    try:
        parse_json(payload, 1000)
    except LimitError as exc:
        assert exc.errors and all(message for _, message in exc.errors)


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(value=_VALUES)
def test_parse_json_reads_what_json_writes_within_the_bounds(value: Any) -> None:
    text = json.dumps(value)
    depth = text.count("[") + text.count("{")  # an upper bound of the nesting
    if depth <= MAX_DEPTH and len(text) <= 10_000 and all(
            len(token) <= 40 for token in text.replace(",", " ").replace(":", " ").split()):
        assert parse_json(text, 10_000) == value
