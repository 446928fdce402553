"""Hostile input against the remote-control handlers, in process, property-based (hypothesis):
`config/set` and `cmd/<name>` requests that are malformed JSON, of the wrong types, huge, with
unknown keys, absurd budgets, stale versions, paths with `..` or absolute paths, bundles with
missing, extra or altered files, or a manifest pointing outside. The handler never raises,
always answers, an error names what is wrong, and an error changes nothing: not the config in
force, not its version, not the state directory."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import load_config
from agent.control import Control, StateStore, changed_paths
from agent.errors import RequestError
from agent.transport import Topics
from tests.agent.test_control import TWO_MODELS
from tests.core.test_bundle import make_bundle

DEVICE = "box-1"
TOPICS = Topics("mlink", DEVICE)
FUZZ = settings(deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])


class FakePublisher:
    """Records responses and retained state; no broker."""

    def __init__(self) -> None:
        self.topics = TOPICS
        self.responses: list[tuple[str, dict[str, Any]]] = []
        self.correlations: list[bytes | None] = []
        self.retained: dict[str, Any] = {}

    def respond(self, topic: str, payload: Any, correlation: bytes | None = None) -> None:
        json.dumps(payload, allow_nan=False)  # what goes out must be valid JSON
        self.responses.append((topic, payload))
        self.correlations.append(correlation)

    def publish(self, topic: str, payload: Any, qos: int | None = None,
                retain: bool = False) -> None:
        self.retained[topic] = payload

    def subscribe(self, topic: str, handler: Any) -> None:
        pass


class FakeAgent:
    """What Control drives (agent.controlled.Controlled); accepts what Control hands it."""

    def __init__(self, config: Any, bundle_root: Path) -> None:
        self.config = config
        self.bundle_root = bundle_root
        self.config_version = 0
        self.swapped: list[Path] = []
        self.statuses: list[tuple[str, int]] = []  # each status published, with its version

    def wait_ready(self, timeout_s: float) -> bool:
        return True

    def reconfigure(self, new: Any) -> None:
        self.config = new

    def remeasure(self) -> dict[str, Any]:
        return {"selection": {}, "costs": {}}

    def reselect(self) -> dict[str, Any]:
        return {"selection": {}}

    def swap_bundle(self, bundle: Any) -> dict[str, Any]:
        self.swapped.append(bundle.root)
        self.bundle_root = bundle.root
        return {}

    def upload(self, reason: str) -> dict[str, Any]:
        raise RequestError([("", "no profiling window rows kept yet")])

    def publish_status(self, state: str) -> None:
        self.statuses.append((state, self.config_version))


class Rig:
    def __init__(self, root: Path, extra: str = "") -> None:
        root.mkdir(parents=True, exist_ok=True)
        (root / "agent.toml").write_text(TWO_MODELS + extra)
        self.config = load_config(root / "agent.toml")
        self.state = root / "state"
        self.store = StateStore(self.state)
        self.publisher = FakePublisher()
        self.agent = FakeAgent(self.config, root / "bundle")
        self.control = Control(self.agent, self.publisher, self.store)  # type: ignore[arg-type]
        self.outside = root

    def snapshot(self) -> tuple[Any, ...]:
        files = sorted((str(p.relative_to(self.outside)), p.is_symlink() and str(p.resolve()))
                       for p in self.outside.rglob("*"))
        config_file = self.store.config_file
        return (self.agent.config.model_dump_json(), self.control.version, self.store.version,
                self.store.transaction, json.dumps(self.store.overrides, sort_keys=True),
                config_file.read_bytes() if config_file.exists() else b"", files,
                len(self.agent.swapped))

    def send(self, topic: str, payload: bytes, retain: bool = False,
             properties: Any = None) -> dict[str, Any]:
        message = mqtt.MQTTMessage(topic=topic.encode())
        message.payload = payload
        message.retain = retain
        if properties is not None:
            message.properties = properties
        before = len(self.publisher.responses)
        self.control.handle(message)
        assert len(self.publisher.responses) == before + 1, "every request gets one answer"
        return self.publisher.responses[-1][1]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Rig:
    return Rig(tmp_path_factory.mktemp("fuzz"))


def _check(rig: Rig, topic: str, payload: bytes, expect_error: bool = False,
           paths: set[str] | None = None) -> dict[str, Any]:
    """Send; an error names its problems and changes nothing."""
    before = rig.snapshot()
    response = rig.send(topic, payload)
    assert response["status"] in ("ok", "error")
    if response["status"] == "error":
        assert response["errors"], response
        for error in response["errors"]:
            assert isinstance(error["path"], str) and isinstance(error["message"], str)
            assert error["message"].strip()
        assert rig.snapshot() == before, response
    elif expect_error:
        raise AssertionError(f"accepted a hostile request: {payload[:300]!r} -> {response}")
    if paths is not None and response["status"] == "error":
        named = {e["path"] for e in response["errors"]}
        assert named & paths, (paths, response)
    return response


# -- config/set ------------------------------------------------------------------------------

JSON_LEAVES = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(
    allow_nan=True, allow_infinity=True) | st.text(max_size=20)
JSON_VALUES = st.recursive(JSON_LEAVES, lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.text(max_size=12), children, max_size=4),
                           max_leaves=12)
KEYS = st.sampled_from(["budget", "selection", "profiling", "publish", "models", "mqtt",
                        "source", "bundle", "state", "device_id", "control", "max_frames",
                        "transaction", "version", "../etc", "/abs", ""]) | st.text(max_size=8)
FIELDS = {
    "budget": st.fixed_dictionaries({}, optional={
        "memory_mb": JSON_LEAVES | st.sampled_from([-1, 0, 1e-300, 1e308, 1e9, 3.0]),
        "delay_ms": JSON_LEAVES | st.sampled_from([-5, 0, 1e12, 2.5]),
        "gpu": JSON_LEAVES}),
    "selection": st.fixed_dictionaries({}, optional={
        "policy": st.sampled_from(["activation", "all", "standalone", "exact", "greedy", "",
                                   None, 3])}),
    "publish": st.fixed_dictionaries({}, optional={
        "decoded": JSON_LEAVES, "models": st.lists(st.sampled_from(
            ["digit", "parity", "nope", "../x", "/etc/passwd"]), max_size=3) | JSON_LEAVES}),
    "models": st.dictionaries(st.sampled_from(["digit", "parity", "nope", "..", "/etc"]),
                              st.fixed_dictionaries({}, optional={
                                  "enabled": JSON_LEAVES,
                                  "path": st.sampled_from(["/etc/shadow", "../../x", "m.tflite"]),
                                  "threads": JSON_LEAVES}) | JSON_LEAVES, max_size=3),
}


@st.composite
def config_requests(draw: st.DrawFn) -> dict[str, Any]:
    """A request whose `version` is ("offset", n) from the version in force (resolved when
    sent, so that generation does not depend on state) or ("raw", any JSON leaf)."""
    request: dict[str, Any] = {}
    if draw(st.booleans()):
        request["transaction"] = draw(st.text(alphabet="ab1_.:-/ #", min_size=0, max_size=10)
                                      | JSON_LEAVES)
    request["version"] = draw(st.integers(-3, 3).map(lambda n: ("offset", n))
                              | JSON_LEAVES.map(lambda v: ("raw", v)))
    for section, strategy in FIELDS.items():
        if draw(st.booleans()):
            request[section] = draw(strategy | JSON_LEAVES)
    if draw(st.integers(0, 3)) == 0:
        request[draw(KEYS)] = draw(JSON_VALUES)
    return request


def test_fuzz_config_requests(rig: Rig) -> None:
    accepted = []

    @settings(FUZZ, max_examples=1500)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        request = data.draw(config_requests())
        old_config, old_version = rig.agent.config, rig.control.version
        if isinstance(request["version"], tuple):  # not overwritten by a random key
            kind, value = request["version"]
            request["version"] = old_version + value if kind == "offset" else value
        response = _check(rig, TOPICS.config_set, json.dumps(request).encode())
        if response["status"] == "ok":
            accepted.append(request)
            retry = request.get("version") == old_version
            assert rig.control.version == (old_version if retry else request["version"])
            assert sorted(response["applied"]) == changed_paths(old_config, rig.agent.config)
            assert not ({"mqtt", "source", "bundle", "state", "device_id", "control"}
                        & set(request))
            for model in rig.agent.config.models:
                assert model.path == next(m.path for m in old_config.models
                                          if m.id == model.id)

    run()
    assert accepted, "the generator must also reach valid requests"


HOSTILE_CONFIG = [
    (b"{not json", {""}), (b"\xff\xfe", {""}), (b"[1, 2]", {""}), (b'"text"', {""}),
    (b"null", {""}), (b'{"transaction": 5, "version": 99}', {"transaction"}),
    (b'{"transaction": "a b", "version": 99}', {"transaction"}),
    (b'{"version": "99", "budget": {"memory_mb": 2}}', {"version"}),
    (b'{"version": 99.5, "budget": {"memory_mb": 2}}', {"version"}),
    (b'{"version": true, "budget": {"memory_mb": 2}}', {"version"}),
    (b'{"version": -1, "budget": {"memory_mb": 2}}', {"version"}),
    (b'{"version": 99}', {""}),
    (b'{"version": 99, "budget": {"memory_mb": -3}}', {"budget.memory_mb"}),
    (b'{"version": 99, "budget": {"memory_mb": 0}}', {"budget.memory_mb"}),
    (b'{"version": 99, "budget": {"memory_mb": 1e300}}', {"budget.memory_mb"}),
    (b'{"version": 99, "budget": {"memory_mb": Infinity}}', {"budget.memory_mb", ""}),
    (b'{"version": 99, "budget": {"memory_mb": NaN}}', {"budget.memory_mb", ""}),
    (b'{"version": 99, "budget": {"memory_mb": "2 MB"}}', {"budget.memory_mb"}),
    (b'{"version": 99, "budget": {"power_w": 5}}', {"budget.power_w"}),
    (b'{"version": 99, "bundle": {"path": "/tmp/evil"}}', {"bundle"}),
    (b'{"version": 99, "models": {"digit": {"path": "../../../etc/shadow"}}}',
     {"models.digit.path"}),
    (b'{"version": 99, "models": {"../digit": {"enabled": true}}}', {"models.../digit"}),
    (b'{"version": 99, "control": {"require_signature": false}}', {"control"}),
    (b'{"version": 99, "mqtt": {"host": "evil"}}', {"mqtt"}),
    (b'{"version": 99, "state": {"dir": "/"}}', {"state"}),
    (b'{"version": 99, "source": {"type": "images", "path": "/"}}', {"source"}),
    (b'{"version": 99, "publish": {"models": ["/etc/passwd"]}}', {"publish.models.0"}),
    (b'{"version": 99, "selection": {"policy": "__import__(\'os\')"}}', {"selection.policy"}),
    (json.dumps({"version": 99, "budget": {"memory_mb": 2}, "x": "y" * 70_000}).encode(),
     {""}),
]


@pytest.mark.parametrize(("payload", "paths"), HOSTILE_CONFIG)
def test_hostile_config_requests_name_the_problem(tmp_path: Path, payload: bytes,
                                                  paths: set[str]) -> None:
    _check(Rig(tmp_path), TOPICS.config_set, payload, expect_error=True, paths=paths)


def test_stale_versions_are_refused(rig: Rig) -> None:
    response = _check(rig, TOPICS.config_set, json.dumps(
        {"transaction": "fresh", "version": rig.control.version + 1,
         "budget": {"memory_mb": 7.25}}).encode())
    assert response["status"] == "ok"

    @settings(FUZZ, max_examples=200)
    @given(version=st.integers(-(2**53), rig.control.version - 1))
    def run(version: int) -> None:
        response = _check(rig, TOPICS.config_set, json.dumps(
            {"transaction": "stale", "version": version, "budget": {"memory_mb": 1.5}}).encode(),
            expect_error=True, paths={"version"})
        assert "stale" in response["errors"][0]["message"]

    run()
    retained = rig.send(TOPICS.config_set, b'{"version": 10000, "budget": {"memory_mb": 2}}',
                        retain=True)
    assert retained["status"] == "error" and "retained" in retained["errors"][0]["message"]


def test_an_applied_config_publishes_the_status_once_with_its_version(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    response = _check(rig, TOPICS.config_set, json.dumps(
        {"transaction": "once", "version": 3, "budget": {"memory_mb": 7.25}}).encode())
    assert response["status"] == "ok" and rig.control.version == 3
    assert rig.agent.statuses == [("running", 3)]
    _check(rig, TOPICS.config_set, json.dumps(
        {"transaction": "bad", "version": 4, "budget": {"memory_mb": -1.0}}).encode(),
        expect_error=True)
    assert rig.agent.statuses == [("running", 3)]  # a refusal changes nothing


# -- commands --------------------------------------------------------------------------------

def test_fuzz_commands(rig: Rig) -> None:
    names = st.sampled_from(["reprofile", "reselect", "bundle", "selfdestruct", "..", "x" * 200,
                             "a+b", "#"]) | st.text(min_size=1, max_size=20).filter(
        lambda s: "/" not in s)
    payloads = (st.binary(max_size=300)
                | JSON_VALUES.map(lambda v: json.dumps(v).encode())
                | st.fixed_dictionaries({}, optional={
                    "transaction": JSON_LEAVES, "sha256": JSON_LEAVES | st.text(
                        "0123456789abcdef", min_size=64, max_size=64),
                    "data": JSON_LEAVES | st.binary(max_size=64).map(
                        lambda b: base64.b64encode(b).decode()),
                    "chunk": JSON_VALUES, "chunks": JSON_VALUES,
                }).map(lambda d: json.dumps(d).encode()))

    @settings(FUZZ, max_examples=1200)
    @given(name=names, payload=payloads)
    def run(name: str, payload: bytes) -> None:
        response = _check(rig, TOPICS.command(name), payload,
                          expect_error=name not in ("reprofile", "reselect"))
        if name not in ("reprofile", "reselect", "bundle"):
            assert any(words in e["message"] for e in response["errors"]
                       for words in ("unknown command", "out of range", "finite")) or \
                response["errors"][0]["path"] in ("", "transaction")

    run()


# -- bundle pushes ---------------------------------------------------------------------------

def _tar(entries: list[tuple[str, bytes | str]]) -> bytes:
    """(name, bytes) a file; (name, "->target") a symlink."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in entries:
            info = tarfile.TarInfo(name)
            if isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content[2:]
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def bundle_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    root = make_bundle(tmp_path_factory.mktemp("b") / "bundle")
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


MUTATIONS = ["none", "drop", "extra", "alter", "manifest_outside", "profile_outside",
             "member_dotdot", "member_absolute", "symlink", "wrong_sha", "bad_base64",
             "not_tar", "manifest_garbage", "nested_two_tops"]


@st.composite
def bundle_pushes(draw: st.DrawFn, files: dict[str, bytes]) -> tuple[str, bytes]:
    mutation = draw(st.sampled_from(MUTATIONS))
    entries: dict[str, bytes | str] = dict(files)
    names = sorted(n for n in files if n != "manifest.json")
    manifest = json.loads(files["manifest.json"])
    if mutation == "drop":
        entries.pop(draw(st.sampled_from(names)))
    elif mutation == "extra":
        entries[draw(st.sampled_from(["links/evil.tflite", "x", "profile.json.bak"]))] = \
            draw(st.binary(max_size=20))
    elif mutation == "alter":
        name = draw(st.sampled_from(names))
        original = files[name]
        index = draw(st.integers(0, len(original) - 1))
        entries[name] = original[:index] + bytes([original[index] ^ draw(
            st.integers(1, 255))]) + original[index + 1:]
    elif mutation == "manifest_outside":
        bad = draw(st.sampled_from(["../outside", "/etc/passwd", "links/../../x", "a/../../b"]))
        manifest["files"][bad] = "0" * 64
        entries["manifest.json"] = json.dumps(manifest).encode()
    elif mutation == "profile_outside":
        manifest["profile"] = draw(st.sampled_from(["../../etc/passwd", "/etc/passwd"]))
        entries["manifest.json"] = json.dumps(manifest).encode()
    elif mutation == "manifest_garbage":
        entries["manifest.json"] = draw(st.binary(max_size=40) | JSON_VALUES.map(
            lambda v: json.dumps(v).encode()))
    elif mutation == "member_dotdot":
        entries[draw(st.sampled_from(["../evil", "links/../../evil", "../../../tmp/evil"]))] = b"x"
    elif mutation == "member_absolute":
        entries["/tmp/mlink-fuzz-evil"] = b"x"
    elif mutation == "symlink":
        entries[draw(st.sampled_from(["links/a__b.tflite", "evil"]))] = "->/etc/passwd"
    prefix = "top/" if mutation == "nested_two_tops" else ""
    archive = _tar([(prefix + n, c) for n, c in entries.items()]
                   + ([("other/x", b"y")] if mutation == "nested_two_tops" else []))
    if mutation == "not_tar":
        archive = draw(st.binary(min_size=1, max_size=200))
    sha = hashlib.sha256(archive).hexdigest()
    if mutation == "wrong_sha":
        sha = hashlib.sha256(archive + b"!").hexdigest()
    data = base64.b64encode(archive).decode()
    if mutation == "bad_base64":
        data = data[:10] + "!*" + data[10:]
    return mutation, json.dumps({"transaction": "push", "sha256": sha, "data": data}).encode()


def test_fuzz_bundle_pushes(rig: Rig, bundle_files: dict[str, bytes]) -> None:
    seen: set[str] = set()

    @settings(FUZZ, max_examples=600)
    @given(push=bundle_pushes(bundle_files))
    def run(push: tuple[str, bytes]) -> None:
        mutation, payload = push
        seen.add(mutation)
        response = _check(rig, TOPICS.command("bundle"), payload,
                          expect_error=mutation != "none")
        if mutation == "none":
            assert response["status"] == "ok", response
        assert not Path("/tmp/mlink-fuzz-evil").exists()
        assert not (rig.outside.parent / "evil").exists()

    run()
    assert seen == set(MUTATIONS)
    incoming = [p for p in rig.store.bundles.iterdir() if p.name.startswith(".incoming")]
    assert incoming == [], "no staging left behind"
    shutil.rmtree(rig.store.bundles, ignore_errors=True)


# -- signatures required ---------------------------------------------------------------------

def test_fuzz_unsigned_and_forged_requests_when_signatures_are_required(tmp_path: Path) -> None:
    from agent.security import Verifier, sign

    key = b"the box's own key, 32 bytes long"
    rig = Rig(tmp_path)
    rig.control.verifier = Verifier(key, required=True)
    valid = {"transaction": "t", "version": 5, "budget": {"memory_mb": 2.0}}
    forgeries = st.one_of(
        JSON_VALUES.map(lambda v: json.dumps(v).encode()),  # unsigned, anything
        st.builds(lambda k: sign(k, TOPICS.config_set, valid),
                  st.binary(min_size=16, max_size=40).filter(lambda k: k != key)),
        st.builds(lambda t: sign(key, t, valid),  # signed for another topic
                  st.sampled_from([TOPICS.command("reselect"), "mlink/other/config/set"])),
        st.builds(lambda s, g: json.dumps({"signed": s, "signature": g}).encode(),
                  JSON_VALUES.map(json.dumps), st.text("0123456789abcdef", min_size=64,
                                                       max_size=64)),
        st.builds(lambda extra: json.dumps({**json.loads(sign(key, TOPICS.config_set, valid)),
                                            **extra}).encode(),
                  st.dictionaries(st.sampled_from(["version", "budget", "x"]), JSON_LEAVES,
                                  min_size=1)),
    )

    @settings(FUZZ, max_examples=400)
    @given(payload=forgeries)
    def run(payload: bytes) -> None:
        response = _check(rig, TOPICS.config_set, payload, expect_error=True)
        assert {e["path"] for e in response["errors"]} & {"signature", "signed", ""} or all(
            "finite" in e["message"] or "2**53" in e["message"] for e in response["errors"])

    run()
    assert _check(rig, TOPICS.config_set, sign(key, TOPICS.config_set, valid))["status"] == "ok"
