"""Broker security against a real Mosquitto with a password file, an ACL and a TLS listener
that requires a client certificate, all made by the test: the agent's publisher logs in with
the password read from a file or a systemd credential, a wrong one is refused with a clear
error, TLS works with the CA (and the client certificate) and fails without them, and the ACL
confines the agent to its own topics. End to end: the agent process over TLS with a
credential, obeying the operator and unreachable for another broker user."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from agent.config import ConfigError, MqttConfig, TlsConfig
from agent.transport import Publisher, PublishError
from tests.support.agent_process import DEVICE, AgentProcess, Client, write_config
from tests.support.broker_security import Certificates, make_certificates, secured_broker

USERS = {"box": "box-secret", "operator": "op-secret", "intruder": "in-secret"}
ACL = (f"user box\ntopic readwrite mlink/{DEVICE}/#\n\n"
       "user operator\ntopic readwrite mlink/#\n\n"
       "user intruder\ntopic read mlink/#\ntopic write mlink/other/#\n")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture()
def broker(certs: Certificates, tmp_path: Path):
    with secured_broker(tmp_path, certs, USERS, ACL) as running:
        yield running


def _secret(tmp_path: Path, text: str, name: str = "password") -> Path:
    path = tmp_path / name
    path.write_text(text + "\n")
    return path


def _publisher(port: int, **settings: object) -> Publisher:
    return Publisher(MqttConfig(port=port, client_id=f"sec-{id(settings)}", **settings),
                     DEVICE)


def test_login_with_a_password_file_and_a_wrong_one(broker, tmp_path: Path) -> None:
    good = _publisher(broker.port, username="box",
                      password_file=_secret(tmp_path, USERS["box"]))
    good.connect(10)
    assert good.connected
    good.close(1)

    wrong = _publisher(broker.port, username="box", password_file=_secret(tmp_path, "guess",
                                                                          "wrong"))
    with pytest.raises(PublishError, match=r"refused the connection \(user 'box'\).*password"):
        wrong.connect(10)
    wrong.close(0)
    anonymous = _publisher(broker.port)
    with pytest.raises(PublishError, match=r"refused the connection \(anonymous\)"):
        anonymous.connect(10)
    anonymous.close(0)
    missing = _publisher(broker.port, username="box", password_file=tmp_path / "nope")
    with pytest.raises(ConfigError, match="cannot read the broker password"):
        missing.connect(10)


def test_password_from_a_systemd_credential(broker, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _secret(tmp_path, USERS["box"], "mqtt-password")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    publisher = _publisher(broker.port, username="box", password_credential="mqtt-password")
    publisher.connect(10)
    assert publisher.connected
    publisher.close(1)


def _tls(certs: Certificates, **changes: object) -> TlsConfig:
    settings: dict[str, object] = {"ca_file": certs.ca, "cert_file": certs.client_cert,
                                   "key_file": certs.client_key}
    settings.update(changes)
    return TlsConfig(**settings)


def test_tls_with_the_ca_and_without_it(broker, certs: Certificates, tmp_path: Path) -> None:
    password = _secret(tmp_path, USERS["box"])
    ok = _publisher(broker.tls_port, username="box", password_file=password, tls=_tls(certs))
    ok.connect(10)
    assert ok.connected
    ok.close(1)

    for tls, message in [
        (_tls(certs, ca_file=certs.other_ca), "TLS handshake .* failed: .*certificate"),
        (_tls(certs, ca_file=None), "TLS handshake .* failed: .*certificate"),
    ]:
        refused = _publisher(broker.tls_port, username="box", password_file=password, tls=tls)
        with pytest.raises(PublishError, match=message):
            refused.connect(10)
        refused.close(0)
    # the broker requires a client certificate signed by its CA
    anonymous_client = _publisher(broker.tls_port, username="box", password_file=password,
                                  tls=_tls(certs, cert_file=None, key_file=None))
    with pytest.raises(PublishError, match="no connection"):
        anonymous_client.connect(3)
    anonymous_client.close(0)
    # plain MQTT to the TLS port gets nowhere either
    plain = _publisher(broker.tls_port, username="box", password_file=password)
    with pytest.raises(PublishError):
        plain.connect(3)
    plain.close(0)


def test_tls_hostname_check(broker, certs: Certificates, tmp_path: Path) -> None:
    """The server certificate names 127.0.0.1 only: `localhost` fails unless the check is off."""
    password = _secret(tmp_path, USERS["box"])
    strict = Publisher(MqttConfig(host="localhost", port=broker.tls_port, username="box",
                                  password_file=password, tls=_tls(certs)), DEVICE)
    with pytest.raises(PublishError, match=r"TLS handshake .*(hostname|IP address|match)"):
        strict.connect(10)
    strict.close(0)
    lax = Publisher(MqttConfig(host="localhost", port=broker.tls_port, username="box",
                               password_file=password,
                               tls=_tls(certs, verify_hostname=False)), DEVICE)
    lax.connect(10)
    assert lax.connected
    lax.close(1)


def test_tls_config_is_strict(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cert_file and key_file together"):
        TlsConfig(cert_file=tmp_path / "c.pem")
    broken = _publisher(1, tls=TlsConfig(ca_file=tmp_path / "missing.pem"))
    with pytest.raises(PublishError, match=r"mqtt\.tls: cannot load"):
        broken.connect(1)


def _puback(port: int, user: str, topic: str) -> str:
    """Publish once at QoS 1 as `user` over MQTT v5; the PUBACK's reason code as text."""
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                         protocol=mqtt.MQTTv5, client_id=f"acl-{user}")
    client.username_pw_set(user, USERS[user])
    acked = threading.Event()
    reasons: list[str] = []

    def on_publish(_c: object, _u: object, _mid: int, reason: object, _p: object) -> None:
        reasons.append(str(reason))
        acked.set()

    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(topic, b"{}", qos=1)
        assert acked.wait(10)
    finally:
        client.disconnect()
        client.loop_stop()
    return reasons[0]


def test_the_acl_confines_the_agents_user(broker) -> None:
    allowed = {"Success", "No matching subscribers"}
    assert _puback(broker.port, "box", f"mlink/{DEVICE}/status") in allowed
    assert _puback(broker.port, "box", "mlink/other-box/config/set") == "Not authorized"
    assert _puback(broker.port, "box", "homeassistant/x/config") == "Not authorized"
    assert _puback(broker.port, "intruder", f"mlink/{DEVICE}/config/set") == "Not authorized"
    assert _puback(broker.port, "operator", f"mlink/{DEVICE}/config/set") in allowed


def test_agent_over_tls_with_a_credential_obeys_only_the_acl(digits_build, broker,
                                                             certs: Certificates,
                                                             tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    _secret(credentials, USERS["box"], "mqtt-password")
    tls = (f'\n[mqtt.tls]\nca_file = "{certs.ca}"\ncert_file = "{certs.client_cert}"\n'
           f'key_file = "{certs.client_key}"\n')
    config = write_config(digits_build.root, broker.port, tmp_path / "state", extra=tls)
    config.write_text(config.read_text().replace(
        f"port = {broker.port}",
        f'port = {broker.tls_port}\nusername = "box"\npassword_credential = "mqtt-password"'))
    operator = Client(broker.port, login=("operator", USERS["operator"]))
    intruder = Client(broker.port, login=("intruder", USERS["intruder"]))
    agent = AgentProcess(config, env={"CREDENTIALS_DIRECTORY": str(credentials)})
    try:
        operator.latest("status", lambda s: s["state"] == "running" and s["selection"])
        operator.wait(lambda: operator.outputs_of("digit")[2:])
        # the intruder may read, but its request never reaches the agent
        intruder.client.publish(f"mlink/{DEVICE}/config/set", json.dumps(
            {"transaction": "evil", "version": 50, "selection": {"policy": "all"}}), qos=1)
        answer = operator.request("config/set", {"transaction": "op-1", "version": 2,
                                                 "selection": {"policy": "standalone"}})
        assert answer["status"] == "ok" and answer["version"] == 2, answer
        assert all(r["transaction"] != "evil" for r in operator.json_on("config/response"))
        state = operator.latest("config/state", lambda s: s["version"] == 2)
        assert state["config"]["selection"]["policy"] == "standalone"
        assert "box-secret" not in json.dumps(state)
    finally:
        code, log = agent.stop()
    assert code == 0, log[-3000:]
    assert "box-secret" not in log
    assert operator.texts_on("availability")[-1] == "stopped"
    operator.stop()
    intruder.stop()


def test_agent_with_a_wrong_password_stops_with_a_clear_error(digits_build, broker,
                                                               tmp_path: Path) -> None:
    config = write_config(digits_build.root, broker.port, tmp_path / "state")
    config.write_text(config.read_text().replace(
        f"port = {broker.port}",
        f'port = {broker.port}\nusername = "box"\npassword_file = "{_secret(tmp_path, "no")}"'))
    agent = AgentProcess(config)
    log, _ = agent.process.communicate(timeout=120)
    assert agent.process.returncode == 2, log[-3000:]
    assert "refused the connection (user 'box')" in log and "password" in log, log[-3000:]
