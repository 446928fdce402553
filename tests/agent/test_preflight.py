"""`mlink-agent validate-config` checks what the config names, not only its schema: model
files, the bundle and its tasks, the source, the state dir, secret files. Also: the shipped
example config is consistent with the bundle `mlink-train` builds for the digits zoo."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agent.cli import main as agent_main
from agent.config import load_config
from agent.preflight import preflight

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "systemd" / "agent.example.toml"


@pytest.fixture()
def box(digits_build, tmp_path: Path) -> Path:
    """The shipped example config beside the digits build's models, bundle and stream, as
    the README's service install lays them out under /etc/mlink."""
    for name in ("models", "bundle"):
        (tmp_path / name).symlink_to(digits_build.root / name)
    (tmp_path / "stream.npz").symlink_to(digits_build.stream)
    text = EXAMPLE.read_text().replace('# dir = "/var/lib/mlink"', f'dir = "{tmp_path}/state"')
    (tmp_path / "agent.toml").write_text(text)
    return tmp_path / "agent.toml"


def test_the_example_config_fits_the_zoos_bundle(box: Path, capsys) -> None:
    assert preflight(load_config(box)) == []
    assert agent_main(["validate-config", str(box)]) == 0
    assert "ok" in capsys.readouterr().out


@pytest.mark.parametrize(("edit", "path", "words"), [
    (lambda t: t.replace("models/parity.tflite", "models/nothing.tflite"), "models.1.path",
     "not found"),
    (lambda t: t.replace('path = "bundle"', 'path = "no-bundle"'), "bundle.path", "not found"),
    (lambda t: t.replace('dim = 2, labels = ["even", "odd"]', 'dim = 2'), "models.1.task",
     "differs from the bundle"),
    (lambda t: t.replace('path = "stream.npz"', 'path = "missing.npz"'), "source", "missing.npz"),
    (lambda t: t.replace('# password_credential', 'username = "u"\npassword_file = "pw"\n#'),
     "mqtt.password_file", "not found"),
    (lambda t: t.replace('id = "inkbox"', 'id = "ocr"\nenabled = true').replace(
        'path = "models/inkbox.tflite"', 'adapter = "python"\nentry = "no_such_module:Model"'),
     "models.2.entry", "not importable"),
])
def test_each_problem_names_its_path(box: Path, edit, path: str, words: str, capsys) -> None:
    box.write_text(edit(box.read_text()))
    problems = dict(preflight(load_config(box)))
    assert path in problems and words in problems[path], problems
    assert agent_main(["validate-config", str(box)]) == 1
    assert path in capsys.readouterr().err


def test_a_state_dir_that_is_a_file(box: Path) -> None:
    state = box.parent / "state"
    state.write_text("not a folder")
    problems = dict(preflight(load_config(box)))
    assert "is not a directory" in problems["state.dir"]


def test_a_corrupt_bundle_is_named(box: Path, digits_build) -> None:
    bundle = box.parent / "bundle"
    bundle.unlink()
    shutil.copytree(digits_build.bundle, bundle)
    (bundle / "manifest.json").write_text("{not json")
    problems = dict(preflight(load_config(box)))
    assert "manifest.json" in problems["bundle.path"]


@pytest.mark.broker
def test_connect_logs_in_to_the_configured_broker(box: Path, tmp_path: Path, capsys) -> None:
    """`--connect` uses the config's login: the right password passes, a wrong one is named;
    the check publishes nothing on the box's topics."""
    from devtools.broker import LocalBroker
    from tests.support.broker_security import password_file

    passwords = password_file(tmp_path / "passwords", {"box": "right"})
    secret = box.parent / "pw"
    text = box.read_text().replace("# password_credential",
                                   'username = "box"\npassword_file = "pw"\n#')
    with LocalBroker(anonymous=False, extra_config=f"password_file {passwords}\n") as broker:
        box.write_text(text.replace("port = 1883", f"port = {broker.port}"))
        secret.write_text("right")
        assert agent_main(["validate-config", "--connect", str(box)]) == 0
        secret.write_text("wrong")
        assert agent_main(["validate-config", "--connect", str(box)]) == 1
    err = capsys.readouterr().err
    assert "mqtt: the broker at 127.0.0.1" in err and "refused" in err
    box.write_text(text.replace("port = 1883", "port = 1"))
    assert agent_main(["validate-config", "--connect", str(box)]) == 1
    assert "cannot connect to 127.0.0.1:1" in capsys.readouterr().err
