"""The config model is strict: unknown keys are rejected and every error names its path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.cli import main as agent_main
from agent.config import ConfigError, load_config

GOOD = """
device_id = "box-1"
[mqtt]
port = 1884
[bundle]
path = "bundle"
[source]
type = "replay"
path = "stream.npz"
[budget]
memory_mb = 3.5
[[models]]
id = "digit"
path = "models/digit.tflite"
input = "image"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_good_config_and_relative_paths(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert config.mqtt.port == 1884 and config.mqtt.prefix == "mlink"
    assert config.models[0].path == (tmp_path / "models/digit.tflite").resolve()
    assert config.bundle.path == (tmp_path / "bundle").resolve()
    assert config.budget.memory_mb == 3.5 and config.budget.delay_ms is None


@pytest.mark.parametrize(
    ("edit", "path", "message"),
    [
        (lambda t: t.replace("port = 1884", "port = 1884\nportt = 1"), "mqtt.portt", "Extra"),
        (lambda t: t.replace('input = "image"', 'input = "image"\nthreads = "two"'),
         "models.0.threads", "integer"),
        (lambda t: t.replace("memory_mb = 3.5", "memory_mb = -1"), "budget.memory_mb",
         "greater than 0"),
        (lambda t: t.replace('id = "digit"', 'id = "../evil"'), "models.0.id", "pattern"),
        (lambda t: t.replace('path = "stream.npz"', ""), "source.replay.path", "required"),
        (lambda t: t.replace('type = "replay"', 'type = "webcam"'), "source", "tag"),
        (lambda t: t + '[[models]]\nid = "digit"\npath = "x"\ninput = "image"\n', "models",
         "duplicate model id"),
        (lambda t: re.sub(r'device_id = "[^"]*"', 'device_id = "fleet"', t), "device_id",
         "reserved"),
        (lambda t: t + "[fleet]\nwindow_rows = 99\n", "fleet.window_rows", "100"),
        (lambda t: t + "[fleet]\nupload_chunk_kb = 2048\n", "fleet.upload_chunk_kb", "1024"),
        (lambda t: t + "[fleet]\ndrift_margin = nan\n", "fleet.drift_margin", "finite"),
        (lambda t: t + "[fleet]\ndrift_min_interval_s = -1\n", "fleet.drift_min_interval_s",
         "greater than or equal to 0"),
        (lambda t: t.replace("port = 1884", "port = 1884\nstatus_every_s = 0.1"),
         "mqtt.status_every_s", "greater than or equal to 0.5"),
        (lambda t: t.replace("port = 1884", "port = 1884\nstatus_every_s = nan"),
         "mqtt.status_every_s", "finite"),
        (lambda t: t.replace("port = 1884", "port = 1884\nconnect_timeout_s = 0"),
         "mqtt.connect_timeout_s", "greater than 0"),
    ],
)
def test_errors_name_their_path(tmp_path: Path, edit, path: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, edit(GOOD)))
    paths = {p for p, _ in caught.value.errors}
    assert path in paths, caught.value.errors
    assert message.lower() in str(caught.value).lower()


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="line 3"):
        load_config(write(tmp_path, 'device_id = "x"\n[mqtt]\nport = = 3\n'))


def test_validate_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(tmp_path, GOOD.replace("[budget]", "[budgett]"))
    assert agent_main(["validate-config", str(bad)]) == 1
    assert "budgett" in capsys.readouterr().err


def test_the_shipped_example_config_is_valid() -> None:
    config = load_config(Path(__file__).resolve().parents[2] / "systemd" / "agent.example.toml")
    assert [m.task.spec().kind for m in config.models if m.task] == [
        "single_label", "single_label", "localization"]


def test_a_task_that_is_not_a_task_spec(tmp_path: Path) -> None:
    task = 'task = { kind = "localization", dim = 3 }'
    text = GOOD.replace('input = "image"', f'input = "image"\n{task}')
    with pytest.raises(ConfigError, match="4 numbers") as caught:
        load_config(write(tmp_path, text))
    assert caught.value.errors[0][0] == "models.0.task"
