"""[[models]] adapter fields: each adapter names exactly what it needs, checked by path."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import LOCAL_ONLY_MODEL_FIELDS, ConfigError, ModelConfig, load_config

HEAD = ('device_id = "box"\n[bundle]\npath = "b"\n[source]\ntype = "replay"\npath = "s.npz"\n'
        '[[models]]\nid = "m"\n')


@pytest.mark.parametrize(
    ("model", "path", "message"),
    [
        ('adapter = "python"\ninput = "image"\n', "models.0", "needs `entry`"),
        ('adapter = "python"\nentry = "pkg.mod:Model"\npath = "m.py"\ninput = "image"\n',
         "models.0", "no `path`"),
        ('adapter = "tflite"\ninput = "image"\n', "models.0", "needs `path`"),
        ('adapter = "onnx"\nentry = "a:b"\npath = "m.onnx"\ninput = "image"\n', "models.0",
         "no `entry`"),
        ('adapter = "python"\nentry = "os.system"\ninput = "image"\n', "models.0.entry",
         "pattern"),
        ('adapter = "python"\nentry = "x:y; import os"\ninput = "image"\n', "models.0.entry",
         "pattern"),
        ('adapter = "shell"\npath = "m"\ninput = "image"\n', "models.0.adapter", "tflite"),
        ('path = "m.tflite"\ninput = "image"\ntimeout_ms = -1\n', "models.0.timeout_ms",
         "greater than or equal"),
    ],
)
def test_adapter_fields_are_checked(tmp_path: Path, model: str, path: str, message: str) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(HEAD + model)
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert path in {p for p, _ in caught.value.errors}, caught.value.errors
    assert message in str(caught.value)


def test_python_entry_and_paths(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(HEAD + 'adapter = "python"\nentry = "tests.support.python_models:Digit"\n'
                             'input = "image"\ntimeout_ms = 0\n')
    model = load_config(config).models[0]
    assert model.entry == "tests.support.python_models:Digit" and model.path is None
    assert model.timeout_ms == 0
    # the fields that name code or files, which only the local TOML may set
    assert set(LOCAL_ONLY_MODEL_FIELDS) <= set(ModelConfig.model_fields)
    assert {"adapter", "path", "entry"} <= set(LOCAL_ONLY_MODEL_FIELDS)
