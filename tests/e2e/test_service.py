"""The agent as a service, end to end through a real Mosquitto: the contract's payloads
validate against the schemas; a valid config request is applied and acknowledged, an invalid
one answered with errors by path and nothing changed; a restarted agent keeps the remotely set
config; SIGHUP reloads the file; a pushed bundle is swapped in and a corrupted one refused with
the old one still serving; the real mosquitto_pub / mosquitto_sub clients drive and read it."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from devtools.broker import LocalBroker
from tests.support.agent_process import DEVICE, AgentProcess, Client, write_config
from tests.support.contract import validate

ROOT_TOPIC = f"mlink/{DEVICE}"


@pytest.fixture()
def broker():
    with LocalBroker() as running:
        yield running


def _running(client: Client, **where: object) -> dict:
    return client.latest("status", lambda s: s["state"] == "running" and s["selection"]
                         and all(s.get(k) == v for k, v in where.items()))


def test_contract_remote_config_restart_and_reload(digits_build, broker, tmp_path: Path
                                                   ) -> None:
    state = tmp_path / "state"
    config = write_config(digits_build.root, broker.port, state)
    client = Client(broker.port)
    agent = AgentProcess(config)
    try:
        status = _running(client)
        validate("status", status)
        assert status["config_version"] == 0 and status["outbox"]["depth"] >= 0
        assert status["selection"]["predicted"], "a 1 MB budget must leave something predicted"
        outputs = client.wait(lambda: client.outputs_of("digit")[2:])
        for output in outputs:
            validate("output", output)
        for frame in client.json_on("frames/0")[:3]:  # one unnamed source: camera "0"
            validate("frame", frame)
        assert client.texts_on("availability")[-1] == "online"
        config_state = client.latest("config/state")
        validate("config-state", config_state)
        assert config_state["version"] == 0

        # a valid request, MQTT v5 style: answered on the ResponseTopic, correlation echoed
        response, properties = client.request_v5(
            "config/set",
            {"transaction": "t1", "version": 3, "selection": {"policy": "all"},
             "publish": {"decoded": False, "home_assistant": True}},
            f"{ROOT_TOPIC}/reply/me", b"corr-1")
        validate("config-response", response)
        assert response["status"] == "ok", response
        assert response["version"] == 3
        assert set(response["applied"]) == {"selection.policy", "publish.decoded",
                                            "publish.home_assistant"}
        assert properties.CorrelationData == b"corr-1"
        assert client.latest("config/state", lambda s: s["version"] == 3)["config"][
            "selection"]["policy"] == "all"
        status = _running(client, config_version=3)
        assert status["selection"]["policy"] == "all" and not status["selection"]["predicted"]
        seen = len(client.outputs_of("parity"))
        fresh = client.wait(lambda: client.outputs_of("parity")[seen + 2:])
        assert all(o["provenance"] == "executed" and "decoded" not in o for o in fresh)

        # an invalid request: every problem named by its path, nothing changed
        bad = client.request("config/set", {
            "transaction": "t2", "version": 4, "budget": {"memory_mb": -1},
            "mqtt": {"port": 1}, "models": {"nope": {"enabled": False},
                                            "digit": {"path": "/etc/passwd"}},
            "selection": {"policy": "all"}})
        validate("config-response", bad)
        assert bad["status"] == "error" and bad["applied"] == [] and bad["version"] == 3
        paths = {e["path"] for e in bad["errors"]}
        assert paths == {"budget.memory_mb", "mqtt", "models.nope", "models.digit.path"}, bad
        typed = client.request("config/set", {"transaction": "t3", "version": 4,
                                              "budget": {"memory_mb": "2 MB"}})
        assert [e["path"] for e in typed["errors"]] == ["budget.memory_mb"]
        stale = client.request("config/set", {"transaction": "t4", "version": 2,
                                              "selection": {"policy": "standalone"}})
        assert [e["path"] for e in stale["errors"]] == ["version"]
        assert "stale" in stale["errors"][0]["message"]
        garbage = client.request("config/set", b"{not json")
        assert garbage["status"] == "error" and garbage["transaction"] is None
        # a retained request: answered live now, refused from the store at the next start
        subprocess.run(["mosquitto_pub", "-p", str(broker.port), "-r", "-t",
                        f"{ROOT_TOPIC}/cmd/reselect", "-m", '{"transaction": "kept"}'],
                       check=True)
        assert client.latest("cmd/reselect/response",
                             lambda r: r["transaction"] == "kept")["status"] == "ok"
        retry = client.request("config/set", {"transaction": "t1", "version": 3,
                                              "selection": {"policy": "all"}})
        assert retry["status"] == "ok" and retry["applied"] == []
        assert client.latest("config/state")["version"] == 3

        # commands
        reselect = client.request("cmd/reselect", {"transaction": "c1"})
        validate("command-response", reselect)
        assert reselect["status"] == "ok" and reselect["result"]["selection"]["policy"] == "all"
        reprofile = client.request("cmd/reprofile", {"transaction": "c2"})
        assert reprofile["status"] == "ok"
        assert set(reprofile["result"]["costs"]["models"]) == {"digit", "parity", "inkbox"}
        unknown = client.request("cmd/selfdestruct", {"transaction": "c3"})
        validate("command-response", unknown)
        assert unknown["status"] == "error" and unknown["errors"][0]["path"] == "command"

        # SIGHUP: the file's settable part applies at once, with a new version
        config.write_text(config.read_text().replace("memory_mb = 1.0000", "memory_mb = 2.5"))
        agent.signal(signal.SIGHUP)
        reloaded = client.latest("config/state", lambda s: s["version"] == 4)
        assert reloaded["config"]["budget"]["memory_mb"] == 2.5
        assert reloaded["config"]["selection"]["policy"] == "all"  # the remote change stays
    finally:
        code, log = agent.stop()
    assert code == 0, log[-3000:]
    assert client.texts_on("availability")[-1] == "stopped"
    assert client.latest("status")["state"] == "stopped"

    # a restarted agent keeps the remotely set config and its version
    client.messages.clear()
    again = AgentProcess(config)
    try:
        stale = client.latest("cmd/reselect/response", lambda r: r["status"] == "error")
        assert "retained" in stale["errors"][0]["message"]
        subprocess.run(["mosquitto_pub", "-p", str(broker.port), "-r", "-n", "-t",
                        f"{ROOT_TOPIC}/cmd/reselect"], check=True)  # clear it
        restarted = client.latest("config/state", lambda s: s["version"] == 4)
        assert restarted["config"]["selection"]["policy"] == "all"
        assert restarted["config"]["publish"]["decoded"] is False
        assert _running(client)["selection"]["policy"] == "all"
        # the real command-line clients drive and read it
        sub = subprocess.Popen(
            ["mosquitto_sub", "-p", str(broker.port), "-t", f"{ROOT_TOPIC}/config/response",
             "-C", "1", "-W", "60"], stdout=subprocess.PIPE, text=True)
        request = {"transaction": "cli-1", "version": 10, "models": {"inkbox": {"enabled": False}},
                   "selection": {"policy": "activation"}}
        _publish_until_answered(broker.port, request, sub)
        answer = json.loads(sub.stdout.read())
        assert answer["status"] == "ok" and answer["transaction"] == "cli-1", answer
        assert "models.inkbox.enabled" in answer["applied"]
        retained = subprocess.run(
            ["mosquitto_sub", "-p", str(broker.port), "-t", f"{ROOT_TOPIC}/config/state",
             "-C", "1", "-W", "20"], capture_output=True, text=True, check=True)
        assert json.loads(retained.stdout)["settable"]["models"]["inkbox"] == {"enabled": False}
        discovery = json.loads(subprocess.run(
            ["mosquitto_sub", "-p", str(broker.port), "-t",
             f"homeassistant/device/{DEVICE}/config", "-C", "1", "-W", "20"],
            capture_output=True, text=True, check=True).stdout)
        sensors = {c["name"]: c for c in discovery["components"].values()}
        assert set(sensors) == {"digit", "parity", "frames per second"}
        assert sensors["digit"]["state_topic"] == f"{ROOT_TOPIC}/frames/0"
        assert discovery["availability_topic"] == f"{ROOT_TOPIC}/availability"
        status = _running(client, config_version=10)
        costs = client.latest("status/costs", lambda c: set(c["models"]) == {"digit", "parity"})
        validate("status-costs", costs)
        # valid, but nothing fits: refused by the selection, the config in force stays
        tight = client.request("config/set", {"transaction": "tight", "version": 11,
                                              "budget": {"memory_mb": 0.0001}})
        assert tight["status"] == "error" and tight["version"] == 10, tight
        assert tight["errors"][0]["path"] == "budget"
        assert client.latest("config/state")["version"] == 10
        assert _running(client)["selection"] == status["selection"]
        seen = len(client.outputs_of("inkbox"))
        digits = len(client.outputs_of("digit"))
        client.wait(lambda: len(client.outputs_of("digit")) > digits + 5)
        assert len(client.outputs_of("inkbox")) <= seen + 1
        # enabled again: measured on this box, selected, published
        back = client.request("config/set", {"transaction": "back", "version": 12,
                                             "models": {"inkbox": {"enabled": True}}})
        assert back["status"] == "ok" and back["applied"] == ["models.inkbox.enabled"], back
        _running(client, config_version=12)
        client.latest("status/costs", lambda c: set(c["models"]) == {"digit", "parity", "inkbox"})
        client.wait(lambda: client.outputs_of("inkbox")[seen + 3:])
    finally:
        code, log = again.stop()
    assert code == 0, log[-3000:]
    client.stop()


def _publish_until_answered(port: int, request: dict, sub: subprocess.Popen) -> None:
    """mosquitto_sub needs a moment to subscribe: publish once it is listening."""
    time.sleep(1.0)
    subprocess.run(["mosquitto_pub", "-p", str(port), "-q", "1", "-t",
                    f"{ROOT_TOPIC}/config/set", "-m", json.dumps(request)], check=True)
    sub.wait(60)


def _archive(bundle: Path, corrupt: bool = False) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(bundle.rglob("*")):
            if not path.is_file():
                continue
            data = path.read_bytes()
            if corrupt and path.suffix == ".tflite":
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
                corrupt = False
            info = tarfile.TarInfo(f"bundle/{path.relative_to(bundle).as_posix()}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_bundle_push_swaps_atomically_and_refuses_a_corrupted_one(digits_build, broker,
                                                                   tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = write_config(digits_build.root, broker.port, state)
    client = Client(broker.port)
    agent = AgentProcess(config)
    try:
        first = _running(client)
        assert first["bundle"] == str(digits_build.bundle)

        good = _archive(digits_build.bundle)
        sha = hashlib.sha256(good).hexdigest()
        half = len(good) // 2
        part1 = client.request("cmd/bundle", {"transaction": "b1", "sha256": sha, "chunk": 0,
                                              "chunks": 2,
                                              "data": base64.b64encode(good[:half]).decode()})
        assert part1["status"] == "ok" and part1["result"] == {"received": 1, "chunks": 2}
        done = client.request("cmd/bundle", {"transaction": "b1", "sha256": sha, "chunk": 1,
                                             "chunks": 2,
                                             "data": base64.b64encode(good[half:]).decode()})
        validate("command-response", done)
        assert done["status"] == "ok", done
        installed = state / "bundles" / done["result"]["bundle"]
        assert installed.is_dir() and (state / "bundle-current").resolve() == installed
        _running(client, bundle=str(installed), config_version=1)

        # altered file, right archive sha256: the manifest check refuses it
        bad = _archive(digits_build.bundle, corrupt=True)
        refused = client.request("cmd/bundle", {
            "transaction": "b2", "sha256": hashlib.sha256(bad).hexdigest(),
            "data": base64.b64encode(bad).decode()})
        validate("command-response", refused)
        assert refused["status"] == "error"
        assert "sha256 mismatch" in refused["errors"][0]["message"], refused
        # a wrong archive sha256, and an archive that tries to leave the state directory
        wrong = client.request("cmd/bundle", {"transaction": "b3", "sha256": "0" * 64,
                                              "data": base64.b64encode(good).decode()})
        assert wrong["errors"][0]["path"] == "sha256"
        evil = _evil_archive()
        escaped = client.request("cmd/bundle", {
            "transaction": "b4", "sha256": hashlib.sha256(evil).hexdigest(),
            "data": base64.b64encode(evil).decode()})
        assert escaped["status"] == "error" and "inside the bundle" in json.dumps(escaped)
        assert not (tmp_path / "escaped.txt").exists()

        after = _running(client)
        assert after["bundle"] == str(installed)  # the old one still serves
        n = len(client.outputs_of("digit"))
        client.wait(lambda: len(client.outputs_of("digit")) > n + 3)
        assert sorted(p.name for p in (state / "bundles").iterdir()) == [installed.name]

        # what a person at a subscriber sees
        view = subprocess.run(
            [sys.executable, "-m", "agent", "watch", "--port", str(broker.port), "--device",
             DEVICE, "--duration", "2"], capture_output=True, text=True, timeout=60, check=True)
        lines = view.stdout.splitlines()
        assert lines[0].startswith(f"{DEVICE}  [online] running") and "fps" in lines[0]
        assert re.search(r" agent \d+\.\d\d ms/frame ", lines[0]), lines[0]
        rows = {line.split()[0]: line.split() for line in lines[2:] if line.strip()}
        assert set(rows) == {"digit", "parity", "inkbox"}, view.stdout
        assert {row[1] for row in rows.values()} <= {"executed", "predicted"}
    finally:
        code, log = agent.stop()
    assert code == 0, log[-3000:]
    shutil.rmtree(state / "bundles")  # the next start falls back to the configured bundle
    client.stop()


def _evil_archive() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    return buffer.getvalue()


def test_outputs_survive_an_outage_and_a_crash_over_mqtt_311(digits_build, broker,
                                                              tmp_path: Path) -> None:
    from agent.transport.outbox import Outbox

    state = tmp_path / "state"
    config = write_config(digits_build.root, broker.port, state)
    config.write_text(config.read_text().replace(f"port = {broker.port}",
                                                 f'port = {broker.port}\nprotocol = "3.1.1"'))
    client = Client(broker.port)
    agent = AgentProcess(config)
    try:
        client.wait(lambda: client.outputs_of("digit")[5:])
        broker.stop()
        outbox = state / "outbox.sqlite"
        client.wait(lambda: Outbox(outbox).depth >= 20, timeout_s=30)
        agent.signal(signal.SIGKILL)  # crash while the broker is away
        agent.process.wait(10)
        stranded = Outbox(outbox)
        messages = [json.loads(m.payload) for m in stranded.after(0, 100_000)]
        kept = {(m["frame_id"], model) for m in messages for model in m["outputs"]}
        stranded.close()
        assert len(kept) >= 20

        broker.start()
        client.wait(lambda: client.client.is_connected(), timeout_s=30)
        time.sleep(0.5)  # resubscribed
        again = AgentProcess(config)
        arrived = client.wait(lambda: kept <= {(o["frame_id"], o["model"]) for model in
                                               ("digit", "parity", "inkbox")
                                               for o in client.outputs_of(model)}
                              , timeout_s=60)
        assert arrived
        # the restarted agent reports what it found in its outbox
        client.latest("status", lambda s: s["state"] == "running"
                      and s["outbox"]["recovered"] >= len(messages))
        # MQTT 3.1.1: no properties, the answer goes to the default response topic
        answer = client.request("config/set", {"transaction": "v311", "version": 1,
                                               "budget": {"memory_mb": 2.0}})
        assert answer["status"] == "ok" and answer["applied"] == ["budget.memory_mb"]
        # an unclean exit leaves the last will
        again.signal(signal.SIGKILL)
        client.wait(lambda: client.texts_on("availability")[-1:] == ["offline"], timeout_s=30)
    finally:
        agent.stop()
        if "again" in locals():
            again.stop()
    client.stop()


# -- the Service around an agent, in process, on the committed fixture ----------------------

class RecordingPublisher:
    """What the agent hands a publisher: every message kept, nothing sent."""

    def __init__(self) -> None:
        from agent.transport import Topics

        self.topics = Topics("mlink", "test")
        self.sent: list[tuple[str, object]] = []
        self.kept: list[tuple[str, object, bool]] = []  # with `retain`
        self.published = 0
        self.pending = 0
        self.outbox = None
        self.next_seq = 1

    def publish(self, topic: str, payload: object, qos: int | None = None,
                retain: bool = False, key: int | None = None) -> None:
        self.sent.append((topic, payload))
        self.kept.append((topic, payload, retain))

    def hold_frame(self) -> bool:
        return False

    def health(self) -> dict[str, object]:
        """The status's `delivery`: nothing is ever refused here."""
        return {"state": "ok", "problems": [], "connected": True, "refused": {},
                "refused_waiting": 0, "responses_dropped": 0, "disk_full": False,
                "unstored": 0, "frames_skipped": {}}

    def statuses(self) -> list[dict]:
        return [p for t, p in self.sent if t == self.topics.status]  # type: ignore[misc]


@pytest.fixture()
def service(digits_fixture, tmp_path: Path):
    import tests.support.python_models as pm
    from agent.config import load_config
    from agent.scheduler import Agent
    from agent.sdnotify import Notifier
    from agent.service import Service
    from tests.agent.test_scheduler_failures import python_config

    pm.reset()
    pm.MODEL_DIR = digits_fixture.root / "models"
    config = load_config(python_config(tmp_path, digits_fixture.root, policy="exact"))
    publisher = RecordingPublisher()
    agent = Agent.from_config(config, publisher)  # type: ignore[arg-type]
    frames = agent.start()
    agent.process(next(frames))
    yield Service(agent, Notifier({})), publisher
    agent.close()
    pm.reset()


def test_a_refused_change_puts_the_whole_state_back(service) -> None:
    from agent.control import RequestError

    svc, publisher = service
    agent = svc.agent
    before = agent.state()
    # a delay no model meets (a tiny Python model's memory can measure 0 on a busy heap)
    impossible = agent.config.model_copy(update={"budget": agent.config.budget.model_copy(
        update={"memory_mb": None, "delay_ms": 1e-9}), "selection": agent.config.selection
        .model_copy(update={"policy": "standalone"})})
    with pytest.raises(RequestError, match="budget"):
        svc.reconfigure(impossible)
    after = agent.state()
    assert after.config is before.config and after.selection is before.selection
    assert dict(after.models) == dict(before.models)
    assert agent.model_costs == {m: s.cost() for m, s in before.costs.models.items()}
    assert all(agent.models[m].loaded for m in agent.selection.active)
    assert not publisher.statuses()  # nothing changed, nothing said


def test_control_actions_publish_the_status_once_or_leave_it_to_control(service) -> None:
    svc, publisher = service
    svc.config_version = 4
    new = svc.config.model_copy(update={"selection": svc.config.selection.model_copy(
        update={"policy": "all"})})
    svc.reconfigure(new)
    assert svc.agent.selection.policy == "all"
    assert not publisher.statuses()  # control publishes it, once the version is in force
    result = svc.remeasure()
    assert set(result) == {"selection", "costs"}
    (status,) = publisher.statuses()
    assert status["config_version"] == 4 and status["selection"]["policy"] == "all"
    validate("status", status)
    assert status["sources"] == {} and status["delivery"]["state"] == "ok"


def test_costs_go_on_their_own_retained_topic_when_they_move(service) -> None:
    from agent.status import CostsReport

    svc, publisher = service
    topic = publisher.topics.status_costs
    svc.publish_status("running")
    svc.publish_status("running")  # nothing measured since: the costs are not sent again
    costs = [(p, retain) for t, p, retain in publisher.kept if t == topic]
    assert len(costs) == 1 and costs[0][1], "one retained status/costs"
    validate("status-costs", costs[0][0])
    assert set(costs[0][0]["models"]) == {"digit", "parity", "inkbox"}
    status = publisher.statuses()[-1]
    assert "costs" not in status and len(json.dumps(status)) < 2000  # small, every 5 s
    svc.agent.costs.set_model_costs({})  # a figure gone (as before a remeasure): sent again
    svc.publish_status("running")
    assert sum(t == topic for t, _, _ in publisher.kept) == 2
    report = CostsReport()
    figures = svc.agent.cost_figures()
    assert report.due(figures) and not report.due(figures)
