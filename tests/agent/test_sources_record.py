"""Sources behind one interface, and `mlink-agent record` producing a real recording."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from agent.cli import main as agent_main
from agent.config import ConfigError, load_config, validate
from agent.sources import open_source
from links_tflite.interpreter import TFLiteRunner
from links_tflite.recording import Recording
from offline_trainer.zoo import agent_config_text


def source_config(tmp_path: Path, source: dict) -> object:
    data = {"device_id": "t", "bundle": {"path": "b"}, "source": source,
            "models": [{"id": "m", "path": "m.tflite", "input": "image"}]}
    return validate(data, tmp_path).source


def test_city_source_streams_consecutive_seconds(tmp_path: Path) -> None:
    config = source_config(tmp_path, {"type": "city", "seed": 1, "cameras": 2,
                                      "start_day": 1, "start_hour": 9.5})
    frames = list(itertools.islice(open_source(config).frames(), 6))
    assert [f.camera for f in frames] == [0, 1, 0, 1, 0, 1]
    assert [f.ts for f in frames] == [86400 + 9.5 * 3600 + s for s in (0, 0, 1, 1, 2, 2)]
    assert frames[0].modalities["image"].shape == (32, 32, 3)
    assert set(frames[0].ground_truth) == {"persons", "traffic", "vehicles", "vehicle_box",
                                           "caption"}


def test_city_source_config_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        source_config(tmp_path, {"type": "city", "cameras": 9, "start_hour": 25})
    paths = {p for p, _ in caught.value.errors}
    assert {"source.city.cameras", "source.city.start_hour"} <= paths


def test_digits_source(tmp_path: Path) -> None:
    config = source_config(tmp_path, {"type": "digits", "seed": 0, "start": 1795})
    frames = list(open_source(config).frames())
    assert [f.frame_id for f in frames] == [1795, 1796]
    assert frames[0].modalities["image"].shape == (8, 8)
    assert frames[0].ground_truth["digit"].shape == (10,)


def test_images_source_reads_npy_and_png(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    from PIL import Image

    folder = tmp_path / "frames"
    folder.mkdir()
    pixels = (np.arange(48, dtype=np.uint8).reshape(4, 4, 3) * 5)
    Image.fromarray(pixels).save(folder / "b.png")
    np.save(folder / "a.npy", pixels.astype(np.float32))
    config = source_config(tmp_path, {"type": "images", "path": "frames"})
    frames = list(open_source(config).frames())
    assert len(frames) == 2  # a.npy, then b.png, in name order
    for frame in frames:
        np.testing.assert_allclose(frame.modalities["image"], pixels / 255.0, rtol=1e-6)
    empty = source_config(tmp_path, {"type": "images", "path": "frames", "pattern": "*.jpg"})
    with pytest.raises(FileNotFoundError, match="no files match"):
        open_source(empty)


def test_record_command_writes_a_real_recording(digits_build, tmp_path: Path) -> None:
    config = digits_build.root / "agent-record.toml"
    config.write_text(agent_config_text("digits", digits_build.recipes()))
    out = tmp_path / "rec.npz"
    code = agent_main(["record", "--config", str(config), "--frames", "25", "--out", str(out),
                       "--with-frames"])
    assert code == 0
    recording = Recording.load(out)
    assert len(recording) == 25
    assert set(recording.costs) == set(recording.tasks) == {"digit", "parity", "inkbox"}
    assert all(c["delay_ms"] > 0 for c in recording.costs.values())
    runner = TFLiteRunner(digits_build.model_file("digit"))
    np.testing.assert_array_equal(recording.outputs["digit"],
                                  runner(recording.inputs["image"]))
    # the replayed stream carries its ground truth, and the recording keeps it beside
    stream = Recording.load(digits_build.stream)
    assert set(recording.ground_truth) == {"digit", "parity", "inkbox"}
    np.testing.assert_array_equal(recording.ground_truth["parity"],
                                  stream.ground_truth["parity"][:25])


def test_record_needs_declared_tasks(digits_build, tmp_path: Path) -> None:
    text = agent_config_text("digits", digits_build.recipes())
    text = "\n".join(line for line in text.splitlines() if not line.startswith("task = "))
    config = digits_build.root / "agent-notask.toml"
    config.write_text(text + "\n")
    with pytest.raises(ConfigError, match=r"models\.0\.task"):
        from agent.recorder import record

        record(load_config(config), 3)
