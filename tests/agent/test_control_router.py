"""The control router (agent/control/router.py), in process: a command is one route in the
table; every reply has one shape, ok or error; `cmd/*` requests refuse keys their command
does not take, naming each, and such a refusal changes nothing."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from agent.control import response
from tests.agent.test_fuzz_control import TOPICS, Rig, _check, _tar
from tests.support.contract import validate


@pytest.mark.parametrize(("name", "request_"), [
    ("reselect", {"transaction": "r1", "force": True}),
    ("reprofile", {"transaction": "p1", "models": ["digit"], "now": 1}),
    ("forget", {"everything": True}),
    ("bundle", {"transaction": "b1", "sha256": "0" * 64, "data": "", "path": "/etc"}),
])
def test_commands_refuse_keys_they_do_not_take(tmp_path: Path, name: str, request_: dict
                                               ) -> None:
    rig = Rig(tmp_path)
    known = {"transaction", "expires", "sha256", "data", "chunk", "chunks"}
    unknown = [k for k in request_ if k not in known]
    reply = _check(rig, TOPICS.command(name), json.dumps(request_).encode(), True,
                   set(unknown))
    validate("command-response", reply)
    assert [e["path"] for e in reply["errors"]] == unknown
    assert all(f"unknown key: cmd/{name} takes transaction, expires" in e["message"]
               for e in reply["errors"])
    assert reply["result"] is None and reply["command"] == name


def test_a_refused_forget_keeps_the_remote_settings(tmp_path: Path) -> None:
    from agent.control import Control

    rig = Rig(tmp_path)
    rig.control = Control(rig.agent, rig.publisher, rig.store,  # type: ignore[arg-type]
                          tmp_path / "agent.toml")
    assert _check(rig, TOPICS.config_set, b'{"selection": {"policy": "all"}}')["version"] == 1
    _check(rig, TOPICS.command("forget"), b'{"transaction": "f", "all": true}', True, {"all"})
    assert rig.store.overrides == {"selection": {"policy": "all"}}
    assert rig.agent.config.selection.policy == "all" and rig.control.version == 1
    done = _check(rig, TOPICS.command("forget"), b'{"transaction": "f"}')
    assert done["result"]["dropped"] == ["selection.policy"] and rig.control.version == 2


def test_a_bundle_push_with_an_unknown_key_installs_nothing(
        tmp_path: Path, bundle_files: dict[str, bytes]) -> None:
    rig = Rig(tmp_path)
    archive = _tar(list(bundle_files.items()))
    push = {"transaction": "b", "sha256": hashlib.sha256(archive).hexdigest(),
            "data": base64.b64encode(archive).decode()}
    refused = _check(rig, TOPICS.command("bundle"), json.dumps({**push, "into": "/"}).encode(),
                     True, {"into"})
    assert refused["errors"][0]["message"].startswith("unknown key: cmd/bundle takes "
                                                      "transaction, expires, sha256, data")
    assert rig.agent.swapped == [] and not rig.store.bundles.exists()
    done = _check(rig, TOPICS.command("bundle"), json.dumps(push).encode())
    assert done["status"] == "ok" and len(rig.agent.swapped) == 1


def test_expires_is_taken_by_every_command(tmp_path: Path) -> None:
    """Signed commands must carry `expires`; an unsigned one may too."""
    reply = _check(Rig(tmp_path), TOPICS.command("reselect"),
                   b'{"transaction": "t", "expires": 1.5}')
    assert reply["status"] == "ok"


def test_a_command_is_one_route_and_one_handler(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    control = rig.control
    control.routes["cmd/ping"] = control._command("ping", lambda r: {"pong": r.transaction},
                                                  keys=("payload",))
    reply = _check(rig, TOPICS.command("ping"), b'{"transaction": "p", "payload": 1}')
    assert reply == {"status": "ok", "transaction": "p", "command": "ping",
                     "result": {"pong": "p"}, "errors": []}
    assert rig.publisher.responses[-1][0] == TOPICS.command_response("ping")
    refused = _check(rig, TOPICS.command("ping"), b'{"transaction": "p", "x": 1}', True, {"x"})
    assert "payload" in refused["errors"][0]["message"]
    unknown = _check(rig, TOPICS.command("pong"), b"{}", True, {"command"})
    assert "known: reprofile, reselect, forget, upload, bundle, ping" in \
        unknown["errors"][0]["message"]


def test_every_reply_has_one_shape_ok_or_error(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    replies = {
        "config ok": _check(rig, TOPICS.config_set, b'{"budget": {"memory_mb": 2}}'),
        "config error": _check(rig, TOPICS.config_set, b'{"budget": 1}', True),
        "config unparsed": _check(rig, TOPICS.config_set, b"[", True),
        "command ok": _check(rig, TOPICS.command("reselect"), b"{}"),
        "command error": _check(rig, TOPICS.command("reselect"), b'{"x": 1}', True),
        "command unparsed": _check(rig, TOPICS.command("reselect"), b"[", True),
        "unknown command": _check(rig, TOPICS.command("nope"), b"{}", True),
    }
    for kind, reply in replies.items():
        schema = "config-response" if kind.startswith("config") else "command-response"
        validate(schema, reply)
        extra = {"version", "applied"} if schema == "config-response" else {"command",
                                                                             "result"}
        assert set(reply) == {"status", "transaction", "errors"} | extra, kind
    assert response("t", [("a.b", "x" * 1000)], {"k": 1})["errors"][0]["message"].endswith(
        "(1000 characters)"), "every path and message is clipped"


@pytest.fixture(scope="module")
def bundle_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    from tests.core.test_bundle import make_bundle

    root = make_bundle(tmp_path_factory.mktemp("b") / "bundle")
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}
