"""Broken local setups that used to end in a traceback: each exits 2 with a message that
names the file and the problem (issue 13, item 8; the rest of that list is still open)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli import main
from agent.transport.outbox import Outbox, OutboxError
from tests.agent.test_config import GOOD


def _config(tmp_path: Path, state: Path, model_file: bool = True) -> Path:
    if model_file:  # present (its content matters only once the agent loads it)
        (tmp_path / "models").mkdir(exist_ok=True)
        (tmp_path / "models" / "digit.tflite").write_bytes(b"")
    path = tmp_path / "agent.toml"
    path.write_text(GOOD + f'[state]\ndir = "{state}"\n')
    return path


def test_a_binary_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "agent.toml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    assert main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "not UTF-8" in err and "Traceback" not in err


def test_a_state_dir_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    state.write_text("not a folder")
    assert main(["run", "--config", str(_config(tmp_path, state))]) == 2
    err = capsys.readouterr().err
    assert "state.dir" in err and str(state) in err and "Traceback" not in err


@pytest.mark.parametrize("content", [b"garbage " * 200, b"SQLite format 3\x00" + b"\xff" * 2000])
def test_a_corrupt_outbox(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                          content: bytes) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "outbox.sqlite").write_bytes(content)
    with pytest.raises(OutboxError, match="outbox cannot be opened"):
        Outbox(state / "outbox.sqlite")
    assert main(["run", "--config", str(_config(tmp_path, state))]) == 2
    err = capsys.readouterr().err
    assert str(state / "outbox.sqlite") in err and "moved aside" in err


def test_a_folder_of_non_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "pictures"
    folder.mkdir()
    for name in ("a.png", "b.jpg", "c.npy"):
        (folder / name).write_bytes(b"this is not an image")
    path = tmp_path / "agent.toml"
    path.write_text(GOOD.replace('type = "replay"\npath = "stream.npz"',
                                 f'type = "images"\npath = "{folder}"')
                    + f'[state]\ndir = "{tmp_path / "state"}"\n')
    from agent.config import load_config
    from agent.sources import open_source

    source = open_source(load_config(path).source)
    with pytest.raises(RuntimeError, match=r"none of the 3 files .* is a readable image"):
        next(source.frames())
    import numpy as np

    np.save(folder / "d.npy", np.zeros((8, 8)))  # one good file: the others are skipped
    source = open_source(load_config(path).source)
    assert [f.frame_id for f in source.frames()] == [3]


def test_a_missing_model_file_refuses_the_start_unless_not_required(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agent.config import load_config, missing_model_files

    path = _config(tmp_path, tmp_path / "state", model_file=False)
    assert main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "models.0.path" in err and "digit.tflite: no such file" in err, err
    path.write_text(path.read_text().replace('input = "image"\n',
                                             'input = "image"\nrequired = false\n', 1))
    assert missing_model_files(load_config(path)) == []
