"""Hostile input end to end: through a real Mosquitto to one running agent process, on every
topic it reads. Malformed JSON, wrong types, huge payloads, unknown keys, absurd budgets, stale
versions, `..` and absolute paths (the in-process fuzz's hand-picked cases,
tests/agent/test_fuzz_control.py), unknown commands, and bundle pushes with missing, extra or
altered files, a manifest pointing outside, escaping archive members, a wrong sha256 or an oversized
archive. Each is answered on its reply topic with an error that names the problem; the agent
keeps running, and its retained config/state and the bundle in force stay as they were."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.broker import LocalBroker
from tests.agent.test_fuzz_control import HOSTILE_CONFIG, _tar
from tests.support.agent_process import AgentProcess, Client, retained, write_config
from tests.support.contract import validate

pytestmark = pytest.mark.broker  # the module's rig starts Mosquitto

MAX_BUNDLE_MB = 0.25  # the digits bundle is ~40 KB; an oversized push stays cheap to send


class Rig:
    def __init__(self, broker: LocalBroker, client: Client, agent: AgentProcess,
                 state: Path, bundle: Path) -> None:
        self.broker, self.client, self.agent = broker, client, agent
        self.state, self.bundle = state, bundle
        self.files = {p.relative_to(bundle).as_posix(): p.read_bytes()
                      for p in sorted(bundle.rglob("*")) if p.is_file()}
        self.config_state = retained(broker.port, "config/state")


@pytest.fixture(scope="module")
def rig(digits_build, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    state = tmp_path_factory.mktemp("hostile") / "state"
    with LocalBroker() as broker:
        config = write_config(digits_build.root, broker.port, state,
                              extra=f"max_bundle_mb = {MAX_BUNDLE_MB}\n")
        client = Client(broker.port)
        agent = AgentProcess(config)
        client.latest("status", lambda s: s["state"] == "running" and s["selection"])
        try:
            yield Rig(broker, client, agent, state, digits_build.bundle)
        finally:
            code, log = agent.stop()
            client.stop()
    assert code == 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]  # every request was refused, none crashed


def _ask(rig: Rig, topic: str, payload: bytes) -> dict:
    """Publish raw bytes; the next answer on the reply topic (requests go one at a time)."""
    reply = "config/response" if topic == "config/set" else f"{topic}/response"
    seen = len(rig.client.json_on(reply))
    rig.client.client.publish(f"{rig.client.root}/{topic}", payload, qos=1)
    answer = rig.client.wait(lambda: rig.client.json_on(reply)[seen:], timeout_s=30)[0]
    validate("config-response" if topic == "config/set" else "command-response", answer)
    return answer


def _refused(answer: dict, paths: set[str], words: str = "") -> None:
    assert answer["status"] == "error" and answer["errors"], answer
    named = {e["path"] for e in answer["errors"]}
    assert named & paths, (paths, answer)
    text = json.dumps(answer["errors"])
    assert words.lower() in text.lower(), (words, answer)


CONFIG_CASES = [
    *HOSTILE_CONFIG,
    (b'{"transaction": "stale", "version": 0, "budget": {"memory_mb": 2}}', {"version"}),
    (json.dumps({"version": 99, "budget": {"memory_mb": 2}, "unknown": {"a": 1}}).encode(),
     {"unknown"}),
]


@pytest.mark.parametrize(("payload", "paths"), CONFIG_CASES,
                         ids=[f"config-{i}" for i in range(len(CONFIG_CASES))])
def test_hostile_config_requests(rig: Rig, payload: bytes, paths: set[str]) -> None:
    _refused(_ask(rig, "config/set", payload), paths)


@pytest.mark.parametrize(("topic", "payload", "paths", "words"), [
    ("cmd/selfdestruct", b'{"transaction": "x"}', {"command"}, "unknown command"),
    ("cmd/reselect", b"{not json", {""}, "not valid JSON"),
    ("cmd/reselect", b'["a"]', {""}, "JSON object"),
    ("cmd/reselect", b'{"transaction": 7}', {"transaction"}, "string"),
    ("cmd/reprofile", b"x" * 70_000, {""}, "larger than"),
    ("cmd/bundle", b'{"transaction": "b", "sha256": 5}', {"sha256"}, "sha256"),
    ("cmd/bundle", b'{"sha256": "' + b"0" * 64 + b'", "data": "!!"}', {"data"}, "base64"),
    ("cmd/bundle", b'{"sha256": "' + b"0" * 64 + b'", "data": "", "chunk": 5, "chunks": 2}',
     {"chunk"}, "chunk"),
])
def test_hostile_commands(rig: Rig, topic: str, payload: bytes, paths: set[str],
                          words: str) -> None:
    _refused(_ask(rig, topic, payload), paths, words)


def _mutated(files: dict[str, bytes], mutation: str) -> list[tuple[str, bytes | str]]:
    """The digits bundle's files, spoiled one way; (name, "->target") is a symlink."""
    entries: dict[str, bytes | str] = dict(files)
    manifest = json.loads(files["manifest.json"])
    link = next(n for n in sorted(files) if n.endswith(".tflite"))
    if mutation == "missing":
        del entries[link]
    elif mutation == "extra":
        entries["links/extra.tflite"] = b"not listed"
    elif mutation == "altered":
        entries[link] = files[link][:-1] + bytes([files[link][-1] ^ 0xFF])
    elif mutation == "manifest_outside":
        manifest["files"]["../../outside"] = "0" * 64
        entries["manifest.json"] = json.dumps(manifest).encode()
    elif mutation == "member_dotdot":
        entries["../../escaped"] = b"x"
    elif mutation == "member_absolute":
        entries["/tmp/mlink-hostile-escaped"] = b"x"
    elif mutation == "symlink":
        entries["links/evil.tflite"] = "->/etc/passwd"
    return list(entries.items())


@pytest.mark.parametrize(("mutation", "paths", "words"), [
    ("missing", {"data"}, "missing"),
    ("extra", {"data"}, "extra.tflite"),
    ("altered", {"data"}, "sha256 mismatch"),
    ("manifest_outside", {"data"}, "outside"),
    ("member_dotdot", {"data"}, "../../escaped"),
    ("member_absolute", {"data"}, "/tmp/mlink-hostile-escaped"),
    ("symlink", {"data"}, "only regular files"),
    ("wrong_sha256", {"sha256"}, "mismatch"),
    ("oversized", {"data"}, "larger than"),
])
def test_hostile_bundle_pushes(rig: Rig, mutation: str, paths: set[str], words: str) -> None:
    archive = _tar(_mutated(rig.files, mutation))
    if mutation == "oversized":
        padding = os.urandom(int(MAX_BUNDLE_MB * 1024 * 1024) + 1)  # gzip cannot shrink it
        archive = _tar([*_mutated(rig.files, "none"), ("padding", padding)])
    sha = hashlib.sha256(archive + (b"!" if mutation == "wrong_sha256" else b"")).hexdigest()
    push = {"transaction": f"push-{mutation}", "sha256": sha,
            "data": base64.b64encode(archive).decode()}
    answer = _ask(rig, "cmd/bundle", json.dumps(push).encode())
    assert answer["transaction"] == push["transaction"]
    _refused(answer, paths, words)
    assert str(rig.state) not in json.dumps(answer), "the reply gives away a local path"
    assert not Path("/tmp/mlink-hostile-escaped").exists()
    assert not (rig.state.parent / "escaped").exists()
    assert rig.client.latest("status")["bundle"] == str(rig.bundle)  # the old one serves


def test_the_agent_still_serves_after_all_of_it(rig: Rig) -> None:
    """Runs last in this module: nothing changed, outputs still flow, a valid request is
    still obeyed."""
    assert rig.agent.process.poll() is None, "the agent died"
    assert retained(rig.broker.port, "config/state") == rig.config_state
    bundles = rig.state / "bundles"
    assert not bundles.exists() or not any(bundles.iterdir()), "a refused bundle was kept"
    n = len(rig.client.outputs_of("digit"))
    rig.client.wait(lambda: len(rig.client.outputs_of("digit")) > n + 3)
    assert rig.client.request("cmd/reselect", {"transaction": "fine"})["status"] == "ok"
