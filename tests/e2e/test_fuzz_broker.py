"""Property-based hostile requests through a real Mosquitto to one running agent process, on
every request topic: valid and invalid config patches, extreme numbers (NaN, Infinity, 1e999,
numbers past 2**53, 5,000-digit literals), deep nesting, odd command names, long and foreign
MQTT v5 ResponseTopics, replayed and reordered versions, garbage bytes and bundle pushes.

Asserted for every request: it is answered (on its ResponseTopic when that is allowed, else on
the agent's own response topic, CorrelationData echoed), an answer `error` changes nothing
(no config/state published, the version in force unchanged), an `ok` config/set puts its
version in force. Asserted over the run: outputs keep flowing, the agent never dies nor logs
a traceback, and the requests dropped on purpose (over the rate per topic) are counted.

The default run is short (`MLINK_FUZZ_REQUESTS`, default 300); the 10,000-request run and its
figures: benchmarks/results/soak.md ("Hostile requests through the broker")."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from devtools.broker import LocalBroker
from tests.support.agent_process import DEVICE, AgentProcess, wait_until, write_config

pytestmark = pytest.mark.broker

REQUESTS = int(os.environ.get("MLINK_FUZZ_REQUESTS", "300"))
ROOT = f"mlink/{DEVICE}"
ALLOWED_REPLIES = "fuzz/replies/#"


def often_status(config: Path) -> Path:
    """The config with a status every second (5 s by default): the checks after the requests
    wait for a status that counts them all."""
    config.write_text(config.read_text().replace("[mqtt]\n", "[mqtt]\nstatus_every_s = 1\n", 1))
    return config


class Watcher:
    """Keeps only what the checks need: replies by CorrelationData, counts of outputs and of
    config/state messages. `wait` wakes on each message kept (a request's answer is seen when
    it arrives, not at the next poll: hundreds of requests are sent one after another)."""

    def __init__(self, port: int) -> None:
        self.replies: dict[bytes, tuple[str, dict[str, Any]]] = {}
        self.outputs = 0
        self.config_states: list[dict[str, Any]] = []
        self.status: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._arrived = threading.Condition()
        self._ready = threading.Event()
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                  client_id="fuzz-watcher", protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, *_: c.subscribe([(f"{ROOT}/#", 1),
                                                            ("fuzz/replies/#", 1)])
        self.client.on_subscribe = lambda *_: self._ready.set()
        self.client.on_message = self._on_message
        self.client.suppress_exceptions = True  # a failing check must not end the client
        self.errors: list[str] = []
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self._ready.wait(10)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            self._keep(message)
        except Exception as exc:
            self.errors.append(f"{message.topic[:100]}: {exc!r}")
        with self._arrived:
            self._arrived.notify_all()

    def wait(self, predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
        """As `wait_until`, checked again as each message is kept rather than every 50 ms."""
        deadline = time.monotonic() + timeout_s
        with self._arrived:
            while not (value := predicate()):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{what} not met in {timeout_s:.0f} s")
                self._arrived.wait(left)
        return value

    def _keep(self, message: mqtt.MQTTMessage) -> None:
        topic = message.topic
        if "/frames/" in topic:
            self.outputs += 1
            return
        if topic == f"{ROOT}/config/state":
            with self._lock:
                self.config_states.append(json.loads(message.payload))
            return
        if topic == f"{ROOT}/status":
            self.status = json.loads(message.payload)
            return
        correlation = getattr(getattr(message, "properties", None), "CorrelationData", None)
        if correlation is not None and (topic.endswith("response") or "/reply/" in topic
                                        or topic.startswith("fuzz/replies/")):
            with self._lock:
                self.replies[bytes(correlation)] = (topic, json.loads(message.payload))

    def send(self, topic: str, payload: bytes, response_topic: str | None,
             correlation: bytes) -> None:
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = correlation
        if response_topic is not None:
            props.ResponseTopic = response_topic
        self.client.publish(topic, payload, qos=1, properties=props)

    def reply(self, correlation: bytes, timeout_s: float = 15.0) -> tuple[str, dict[str, Any]]:
        try:
            return self.wait(lambda: self.replies.get(correlation), timeout_s,
                             f"the answer to request {correlation!r}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc} (watcher connected: {self.client.is_connected()}, "
                               f"errors: {self.errors[-3:]})") from None

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Run:
    def __init__(self, watcher: Watcher, agent: AgentProcess, state: Path) -> None:
        self.watcher, self.agent, self.state = watcher, agent, state
        self.version = 0
        self.accepted: list[bytes] = []  # config/set payloads put in force, for replays
        self.sent = 0
        self.outcomes: Counter[str] = Counter()
        self.outputs_at_check = 0
        self.started = time.monotonic()
        self.last: tuple[str, bytes, str] | None = None  # the request in flight, for failures
        self.previous: tuple[str, bytes, str] | None = None


@pytest.fixture(scope="module")
def run(digits_build, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    state = tmp_path_factory.mktemp("fuzz-broker") / "state"
    with LocalBroker() as broker:
        config = often_status(write_config(digits_build.root, broker.port, state, extra=(
            "max_bundle_mb = 0.25\n[control]\nrate_per_s = 0\n"
            f'response_topics = ["{ALLOWED_REPLIES}"]\n')))
        watcher = Watcher(broker.port)
        agent = AgentProcess(config, log_file=state.parent / "agent.log")
        wait_until(lambda: watcher.outputs > 3, 120, "the first outputs")
        try:
            yield Run(watcher, agent, state)
        finally:
            code, log = agent.stop()
            watcher.stop()
            if os.environ.get("MLINK_FUZZ_LOG"):
                Path(os.environ["MLINK_FUZZ_LOG"]).write_text(log)
    assert code == 0, log[-3000:]
    assert "Traceback" not in log, log[-5000:]


# -- what is generated -----------------------------------------------------------------------

NUMBERS = st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999", b"1e308",
                           b"9007199254740993", b"-9007199254740993", b"0", b"-1", b"2.5",
                           b"1e-320", b"9" * 5000, b"1." + b"5" * 5000, b"18446744073709551616"])
LEAF = st.one_of(st.none(), st.booleans(), st.integers(-(2**60), 2**60),
                 st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12))
SECTIONS = ["budget", "selection", "profiling", "publish", "models", "mqtt", "state",
            "control", "source", "bundle", "device_id"]
FIELDS = ["memory_mb", "delay_ms", "policy", "period_s", "period_frames", "sample_frames",
          "decoded", "retry_after_s", "enabled", "path", "host"]


@st.composite
def valid_patch(draw: st.DrawFn) -> dict[str, Any]:
    """A patch the agent may well accept (that keeps outputs flowing)."""
    choice = draw(st.integers(0, 4))
    if choice == 0:
        return {"budget": {"memory_mb": draw(st.sampled_from([None, 0.5, 1.0, 2.0, 50.0]))}}
    if choice == 1:
        return {"selection": {"policy": draw(st.sampled_from(
            ["activation", "exact", "standalone", "all"]))}}
    if choice == 2:
        return {"publish": {"decoded": draw(st.booleans())}}
    if choice == 3:
        return {"profiling": {"period_s": draw(st.sampled_from([0, 5.0, 30.0]))}}
    return {"models": {draw(st.sampled_from(["parity", "inkbox"])): {
        "enabled": draw(st.booleans())}}}


def _nest(depth: int, inner: bytes) -> bytes:
    return b'{"a": ' * depth + inner + b"}" * depth


@st.composite
def config_payload(draw: st.DrawFn, run: Run) -> tuple[bytes, str]:
    """Every choice is drawn whatever the state (hypothesis replays draws), then resolved
    against the version in force and the requests accepted so far."""
    kind = draw(st.sampled_from(["valid", "valid", "number", "deep", "version", "replay",
                                 "random", "garbage"]))
    version = run.version + draw(st.integers(-3, 3))
    earlier = draw(st.integers(0, 2**16))
    patch = json.dumps(draw(valid_patch()))[1:-1]
    section, field = draw(st.sampled_from(SECTIONS[:4])), draw(st.sampled_from(FIELDS))
    number = draw(NUMBERS)
    depth = draw(st.integers(1, 3000))
    odd_version = draw(NUMBERS | st.sampled_from([b'"7"', b"true", b"null", b"[]", b"2.0"]))
    random_patch = draw(st.dictionaries(st.sampled_from(SECTIONS), st.dictionaries(
        st.sampled_from(FIELDS), LEAF, max_size=3) | LEAF, max_size=3))
    garbage = draw(st.binary(max_size=200) | st.sampled_from([b"", b"[]", b"null", b"{"]))
    head = f'{{"transaction": "f{run.sent}", "version": '
    if kind == "replay" and run.accepted:
        return run.accepted[earlier % len(run.accepted)], kind
    if kind in ("valid", "replay"):
        return f"{head}{version}, {patch}}}".encode(), "valid"
    if kind == "number":
        return (f'{head}{version}, "{section}": {{"{field}": '.encode() + number + b"}}"), kind
    if kind == "deep":
        return f'{head}{version}, "budget": '.encode() + _nest(depth, b"1") + b"}", kind
    if kind == "version":
        return head.encode() + odd_version + b', "budget": {"memory_mb": 2}}', kind
    if kind == "random":
        return json.dumps({"transaction": f"f{run.sent}", "version": version, **random_patch}
                          ).encode(), kind
    return garbage, kind


@st.composite
def command(draw: st.DrawFn) -> tuple[str, bytes, str]:
    name = draw(st.sampled_from(["reselect", "reselect", "bundle", "reprofile", "selfdestruct",
                                 "", "x" * 300, "ümlaut", "a b", "..", "$x"])
                | st.text(st.characters(blacklist_categories=("Cs", "Cc"),  # Cc: refused by MQTT
                                        blacklist_characters="/+#\x00"), max_size=20))
    if name == "reprofile" and draw(st.integers(0, 9)):  # costly: re-measures every model
        name = "reselect"
    payload = draw(st.sampled_from([
        b'{"transaction": "c"}', b"{}", b"", b"[1]", b"{not json",
        b'{"transaction": "c", "chunk": 1e999, "chunks": 2}',
        b'{"sha256": "' + b"0" * 64 + b'", "data": "AAAA", "chunk": 0, "chunks": 9007199254740993}',
        b'{"sha256": "' + b"0" * 64 + b'", "data": "H4sIAAAAAAAAAwMAAAAAAAAAAAA="}',
        b'{"transaction": "c", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"transaction": "c", "expires": ' + b"9" * 5000 + b"}",
    ]) | st.binary(max_size=100))
    return name, payload, "command"


REPLY_TOPICS = st.one_of(
    st.none(), st.none(),
    st.just(f"{ROOT}/reply/fuzz"),
    st.just("fuzz/replies/a/b"),
    st.just("mlink/another-box/config/set"),
    st.just(f"{ROOT}/config/set"),
    st.just(f"{ROOT}/models/digit/output"),
    st.just(f"{ROOT}/status"),
    st.just("homeassistant/device/digits-demo/config"),
    st.integers(17, 400).map(lambda n: f"{ROOT}/reply/" + "/".join(["l"] * n)),
    st.integers(300, 5000).map(lambda n: f"{ROOT}/reply/" + "x" * n),
)


def _allowed(reply_topic: str | None) -> bool:
    return reply_topic is not None and (
        (reply_topic.startswith(f"{ROOT}/reply/") or reply_topic.startswith("fuzz/replies/"))
        and len(reply_topic) <= 256 and reply_topic.count("/") < 16)


def test_hostile_requests_through_the_broker(run: Run) -> None:
    @settings(deadline=None, database=None, derandomize=True, max_examples=REQUESTS,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate])
    @given(data=st.data())
    def one(data: st.DataObject) -> None:
        if data.draw(st.integers(0, 2)) == 0:
            name, payload, kind = data.draw(command())
            topic, default = f"{ROOT}/cmd/{name}", f"{ROOT}/cmd/{name[:64]}/response"
        else:
            payload, kind = data.draw(config_payload(run))
            topic, default = f"{ROOT}/config/set", f"{ROOT}/config/response"
        reply_topic = data.draw(REPLY_TOPICS)
        correlation = f"q{run.sent}".encode()
        run.last = (topic[:120], payload[:200], (reply_topic or "")[:120])
        states_before, version_before = len(run.watcher.config_states), run.version
        run.watcher.send(topic, payload, reply_topic, correlation)
        run.sent += 1
        try:
            where, answer = run.watcher.reply(correlation)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; this request {run.last}, the one before "
                                 f"{run.previous}") from None
        run.previous = run.last
        assert where == (reply_topic if _allowed(reply_topic) else default), (where, answer)
        assert answer["status"] in ("ok", "error") and (answer["status"] == "ok") != bool(
            answer["errors"]), answer
        run.outcomes[f"{kind}:{answer['status']}"] += 1
        if answer["status"] == "error":
            assert len(run.watcher.config_states) == states_before, "a refusal changed the state"
            if topic.endswith("config/set"):
                assert answer["version"] == version_before, answer
        elif topic.endswith("config/set"):
            assert answer["version"] >= version_before
            if answer["applied"] or answer["version"] > version_before:
                run.watcher.wait(lambda: run.watcher.config_states and
                                 run.watcher.config_states[-1]["version"] == answer["version"],
                                 10, "config/state after an accepted change")
            run.version = answer["version"]
            run.accepted.append(payload)
            if kind == "replay":
                assert answer["applied"] == [], "a replay applied something"
        if run.sent % 50 == 0:  # outputs keep flowing while requests pour in
            seen = run.outputs_at_check
            wait_until(lambda: run.watcher.outputs > seen, 10, "outputs during the requests")
            run.outputs_at_check = run.watcher.outputs
        assert run.agent.process.poll() is None, "the agent died"

    one()
    elapsed = time.monotonic() - run.started
    seen = run.watcher.outputs
    wait_until(lambda: run.watcher.outputs > seen + 3, 10, "outputs after the requests")
    status = wait_until(lambda: run.watcher.status if run.watcher.status and
                        run.watcher.status["control"]["handled"] >= run.sent else None, 30,
                        "the status counting every request")
    assert status["control"]["rate_limited"] == 0 and status["control"]["queue_full"] == 0
    assert status["delivery"]["state"] == "ok", status["delivery"]
    report = {"requests": run.sent, "seconds": round(elapsed, 1),
              "outputs_during": run.watcher.outputs, "outcomes": dict(sorted(
                  run.outcomes.items())), "control": status["control"]}
    print(json.dumps(report, indent=1))
    if os.environ.get("MLINK_FUZZ_REPORT"):
        Path(os.environ["MLINK_FUZZ_REPORT"]).write_text(json.dumps(report, indent=1))
    assert {k.split(":")[1] for k in run.outcomes} == {"ok", "error"}, run.outcomes


def test_a_burst_of_requests_is_rate_limited_and_outputs_keep_flowing(
        digits_build, tmp_path: Path) -> None:
    """500 `reselect` requests at once (each takes the frame lock): beyond the rate per topic
    they are dropped unanswered and counted; the outputs keep flowing meanwhile."""
    with LocalBroker() as broker:
        config = often_status(write_config(digits_build.root, broker.port, tmp_path / "state",
                                           extra="[control]\nrate_per_s = 5\nburst = 10\n"))
        watcher = Watcher(broker.port)
        agent = AgentProcess(config, log_file=tmp_path / "agent.log")
        try:
            wait_until(lambda: watcher.outputs > 3, 120, "the first outputs")
            before = watcher.outputs
            for i in range(500):
                watcher.send(f"{ROOT}/cmd/reselect", b'{"transaction": "burst"}', None,
                             f"b{i}".encode())
            wait_until(lambda: watcher.outputs > before + 20, 20, "outputs during the burst")
            status = wait_until(lambda: watcher.status if watcher.status and watcher.status[
                "control"]["handled"] + watcher.status["control"]["rate_limited"] >= 500
                else None, 30, "every request answered or counted as dropped")
            answered = sum(1 for c in watcher.replies if c.startswith(b"b"))
            control = status["control"]
            assert answered == control["handled"] and 10 <= answered < 100, control
            assert control["rate_limited"] == 500 - answered, control
            assert control["rate_limited_by_topic"] == {f"{ROOT}/cmd/reselect": 500 - answered}
        finally:
            code, log = agent.stop()
            watcher.stop()
    assert code == 0 and "Traceback" not in log, log[-3000:]
    assert log.count("beyond 5/s") == 1, "logged once per topic"
