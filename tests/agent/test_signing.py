"""Signed remote requests (agent/security.py): the documented bytes are what is signed, a
request signed for another topic, with another key, altered, expired or replayed is refused,
unsigned requests are refused when signatures are required; the key comes from a file or a
systemd credential; the used command signatures are kept on disk, so a replay is refused after
a restart too. End to end: an agent that requires signatures obeys only signed requests and
changes nothing for the others, and refuses a replayed command after it was restarted."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from pathlib import Path

import pytest

from agent.config import ConfigError, ControlConfig, load_config
from agent.security import SignatureError, Verifier, sign, signing_bytes
from tests.agent.test_config import GOOD
from tests.support.agent_process import DEVICE, AgentProcess, Client, write_config

KEY = b"0123456789abcdef-box-key"
TOPIC = f"mlink/{DEVICE}/config/set"
COMMAND = f"mlink/{DEVICE}/cmd/reselect"


def test_the_signed_bytes_are_as_documented() -> None:
    request = '{"transaction":"t1","version":3}'
    envelope = json.loads(sign(KEY, TOPIC, request))
    assert envelope["signed"] == request
    expected = hmac.new(KEY, b"mlink-hmac-sha256-v1\n" + TOPIC.encode() + b"\n"
                        + request.encode(), hashlib.sha256).hexdigest()
    assert envelope["signature"] == expected
    assert signing_bytes(TOPIC, request).endswith(request.encode())
    assert Verifier(KEY, True).open(TOPIC, envelope, command=False) == json.loads(request)


def _refusal(verifier: Verifier, topic: str, payload: dict, command: bool = False,
             now: float | None = None) -> tuple[str, str]:
    with pytest.raises(SignatureError) as caught:
        verifier.open(topic, payload, command, now)
    return caught.value.errors[0]


def test_refusals_name_the_problem() -> None:
    verifier = Verifier(KEY, True)
    request = {"transaction": "t1", "version": 3}
    good = json.loads(sign(KEY, TOPIC, request))
    assert _refusal(verifier, TOPIC, request)[0] == "signature"  # unsigned
    assert "wrong signature" in _refusal(verifier, TOPIC, json.loads(
        sign(b"another key of 16+ bytes", TOPIC, request)))[1]
    assert "wrong signature" in _refusal(verifier, "mlink/other/config/set", good)[1]
    altered = {**good, "signed": good["signed"].replace("3", "4")}
    assert "wrong signature" in _refusal(verifier, TOPIC, altered)[1]
    assert _refusal(verifier, TOPIC, {**good, "version": 9})[0] == ""  # smuggled outer keys
    assert _refusal(verifier, TOPIC, {**good, "signature": "xyz"})[0] == "signature"
    assert _refusal(verifier, TOPIC, {**good, "signed": {"version": 3}})[0] == "signed"
    assert _refusal(verifier, TOPIC, json.loads(sign(KEY, TOPIC, "[1, 2]")))[0] == "signed"
    assert _refusal(verifier, TOPIC, json.loads(sign(KEY, TOPIC, "{nope")))[0] == "signed"
    assert _refusal(Verifier(None, False), TOPIC, good)[1].startswith("this agent has no")
    # not required: unsigned passes, a bad signature is still refused
    optional = Verifier(KEY, False)
    assert optional.open(TOPIC, request, command=False) == request
    assert "wrong signature" in _refusal(optional, TOPIC, altered)[1]


def test_signed_commands_expire_and_cannot_be_replayed() -> None:
    verifier = Verifier(KEY, True)
    now = 1_000_000.0
    fresh = json.loads(sign(KEY, COMMAND, {"transaction": "c1", "expires": now + 60}))
    assert verifier.open(COMMAND, fresh, command=True, now=now)["transaction"] == "c1"
    assert "replayed" in _refusal(verifier, COMMAND, fresh, True, now + 1)[1]
    for expires, message in [(now - 1, "expired"), (now + 7200, "ahead"), ("soon", "needs"),
                             (None, "needs"), (True, "needs")]:
        request = {"transaction": "c2"} if expires is None else {"expires": expires}
        path, text = _refusal(verifier, COMMAND, json.loads(sign(KEY, COMMAND, request)),
                              True, now)
        assert path == "expires" and message in text


def test_used_signatures_survive_a_restart(tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    seen = tmp_path / "signatures.json"
    now = time.time()

    def command(transaction: str, ahead_s: float) -> dict:
        return json.loads(sign(KEY, COMMAND, {"transaction": transaction,
                                              "expires": now + ahead_s}))

    first = Verifier(KEY, True, seen_file=seen)
    short, used = command("c0", 1), command("c1", 60)
    first.open(COMMAND, short, True, now)
    first.open(COMMAND, used, True, now)
    assert set(json.loads(seen.read_text())["seen"]) == {short["signature"], used["signature"]}

    again = Verifier(KEY, True, seen_file=seen)  # a new process on the same state directory
    assert "replayed" in _refusal(again, COMMAND, used, True, now + 2)[1]
    later = command("c2", 120)
    again.open(COMMAND, later, True, now + 2)
    # what has expired is pruned at the next write; no temporary file is left behind
    assert set(json.loads(seen.read_text())["seen"]) == {used["signature"], later["signature"]}
    assert [p.name for p in tmp_path.iterdir()] == ["signatures.json"]

    seen.write_text('{"seen": ')  # unreadable: logged, and the agent still starts
    with caplog.at_level(logging.ERROR, logger="agent.security"):
        Verifier(KEY, True, seen_file=seen)
    assert "unreadable" in caplog.text
    # a signature that cannot be recorded is refused rather than left replayable
    blocked = Verifier(KEY, True, seen_file=tmp_path / "missing" / "signatures.json")
    path, text = _refusal(blocked, COMMAND, command("c3", 60), True, now)
    assert path == "signature" and "cannot record" in text


def test_the_key_from_a_file_or_a_credential(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(GOOD + '[control]\nrequire_signature = true\nkey_file = "hmac.key"\n')
    (tmp_path / "hmac.key").write_text(KEY.decode() + "\n")
    config = load_config(path)
    assert config.control.key() == KEY and KEY.decode() not in config.model_dump_json()
    (tmp_path / "hmac.key").write_text("short\n")
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        config.control.key()
    with pytest.raises(ValueError, match="needs key_file or key_credential"):
        ControlConfig(require_signature=True)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    (tmp_path / "mlink-hmac").write_text(KEY.decode())
    assert ControlConfig(require_signature=True, key_credential="mlink-hmac").key() == KEY


@pytest.mark.broker
def test_an_agent_requiring_signatures_obeys_only_signed_requests(digits_build, tmp_path: Path
                                                                  ) -> None:
    from devtools.broker import LocalBroker

    key_file = tmp_path / "hmac.key"
    key_file.write_text(KEY.decode() + "\n")
    with LocalBroker() as broker:
        config = write_config(digits_build.root, broker.port, tmp_path / "state", extra=(
            f'\n[control]\nrequire_signature = true\nkey_file = "{key_file}"\n'))
        client = Client(broker.port)
        agent = AgentProcess(config)
        root = f"mlink/{DEVICE}"
        try:
            client.latest("status", lambda s: s["state"] == "running" and s["selection"])
            change = {"transaction": "t1", "version": 5, "selection": {"policy": "all"}}
            unsigned = client.request("config/set", change)
            assert unsigned["status"] == "error" and unsigned["errors"][0]["path"] == "signature"
            forged = json.loads(sign(b"not the box's key, 16+", f"{root}/config/set", change))
            wrong = _ask(client, "config/set", json.dumps(forged), "t1")
            assert wrong["transaction"] == "t1" and "wrong signature" in json.dumps(wrong)
            assert client.latest("config/state")["version"] == 0  # nothing changed
            assert all(s["selection"]["policy"] != "all" for s in client.json_on("status"))

            signed = _ask(client, "config/set", sign(KEY, f"{root}/config/set", change), "t1")
            assert signed["status"] == "ok" and signed["version"] == 5, signed
            assert client.latest("config/state", lambda s: s["version"] == 5)["config"][
                "selection"]["policy"] == "all"

            # a bundle push: unsigned refused, signed installed
            archive = _bundle_archive(digits_build.bundle)
            push = {"transaction": "b1", "sha256": hashlib.sha256(archive).hexdigest(),
                    "data": base64.b64encode(archive).decode()}
            refused = client.request("cmd/bundle", push)
            assert refused["status"] == "error" and refused["errors"][0]["path"] == "signature"
            assert not (tmp_path / "state" / "bundles").exists()
            push["expires"] = time.time() + 300
            payload = sign(KEY, f"{root}/cmd/bundle", push)
            done = _ask(client, "cmd/bundle", payload, "b1")
            assert done["status"] == "ok", done
            assert (tmp_path / "state" / "bundle-current").is_symlink()
            replay = _ask(client, "cmd/bundle", payload, "b1")
            assert replay["status"] == "error" and "replayed" in json.dumps(replay)
            reselect = sign(KEY, f"{root}/cmd/reselect",
                            {"transaction": "r1", "expires": time.time() + 300})
            assert _ask(client, "cmd/reselect", reselect, "r1")["status"] == "ok"
        finally:
            code, log = agent.stop()
        assert code == 0, log[-3000:]

        # restarted: the captured commands are still refused until they expire
        before = client.latest("config/state")["version"]
        client.messages.clear()
        again = AgentProcess(config)
        try:
            client.latest("status", lambda s: s["state"] == "running" and s["selection"])
            for topic, captured, transaction in (("cmd/reselect", reselect, "r1"),
                                                 ("cmd/bundle", payload, "b1")):
                answer = _ask(client, topic, captured, transaction)
                assert answer["status"] == "error", answer
                assert answer["errors"][0]["path"] == "signature"
                assert "replayed" in answer["errors"][0]["message"]
            assert client.latest("config/state")["version"] == before  # nothing re-applied
            assert not client.json_on("cmd/reselect/response")[:-1]  # only the refusal
        finally:
            code, log = again.stop()
        assert code == 0, log[-3000:]
        client.stop()


def _ask(client: Client, topic: str, payload: bytes | str, transaction: str) -> dict:
    """Send a raw (signed) payload; the next answer for `transaction`."""
    reply = "config/response" if topic == "config/set" else f"{topic}/response"
    seen = len(client.json_on(reply))
    client.client.publish(f"{client.root}/{topic}", payload, qos=1)
    return client.wait(lambda: next((m for m in client.json_on(reply)[seen:]
                                     if m.get("transaction") == transaction), None))


def _bundle_archive(bundle: Path) -> bytes:
    from tests.e2e.test_service import _archive

    return _archive(bundle)


def test_the_schema_examples_are_signed_as_documented() -> None:
    from tests.support.contract import SCHEMAS, validate

    examples = json.loads((SCHEMAS / "signed-request.json").read_text())["examples"]
    verifier = Verifier(KEY, True)
    config = verifier.open("mlink/box-1/config/set", examples[0], command=False)
    validate("config-set", config)
    command = verifier.open("mlink/box-1/cmd/reselect", examples[1], command=True,
                            now=json.loads(examples[1]["signed"])["expires"] - 10)
    validate("command", command)


def test_the_documented_shell_recipe_signs_the_same_bytes() -> None:
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("no openssl")
    request = '{"transaction":"t-43","version":8,"budget":{"memory_mb":2.5}}'
    shell = subprocess.run(
        ["sh", "-c", 'printf "mlink-hmac-sha256-v1\\n%s\\n%s" "$1" "$2" '
                     '| openssl dgst -sha256 -hmac "$3" -r', "sh", TOPIC, request,
         KEY.decode()], capture_output=True, text=True, check=True).stdout.split()[0]
    assert shell == json.loads(sign(KEY, TOPIC, request))["signature"]
