from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from links_tflite.recording import Recording, RecordingError
from links_tflite.tasks import TaskSpec


def small_recording(n: int = 6) -> Recording:
    rng = np.random.default_rng(0)
    return Recording(
        workload="unit",
        frame_ids=np.arange(n),
        ts=np.arange(n, dtype=float),
        tasks={"a": TaskSpec("single_label", 3), "b": TaskSpec("localization", 4)},
        outputs={"a": rng.random((n, 3), dtype=np.float32),
                 "b": rng.random((n, 4), dtype=np.float32)},
        inputs={"image": rng.random((n, 8, 8), dtype=np.float32)},
    )


def test_round_trip(tmp_path: Path) -> None:
    original = small_recording()
    loaded = Recording.load(original.save(tmp_path / "r.npz"))
    assert loaded.tasks == original.tasks
    np.testing.assert_array_equal(loaded.frame_ids, original.frame_ids)
    np.testing.assert_array_equal(loaded.outputs["b"], original.outputs["b"])
    np.testing.assert_array_equal(loaded.inputs["image"], original.inputs["image"])


def test_nan_is_refused_with_its_row(tmp_path: Path) -> None:
    rec = small_recording()
    rec.outputs["a"][4, 1] = np.nan
    with pytest.raises(RecordingError, match=r"outputs/a: NaN or infinite value at row 4"):
        rec.save(tmp_path / "r.npz")


def test_misaligned_and_missing(tmp_path: Path) -> None:
    rec = small_recording()
    rec.outputs["b"] = rec.outputs["b"][:-1]
    with pytest.raises(RecordingError, match=r"outputs/b: shape \(5, 4\), expected \(6, 4\)"):
        rec.validate()
    rec = small_recording()
    del rec.outputs["a"]
    with pytest.raises(RecordingError, match="outputs/a: missing"):
        rec.validate()
    rec = small_recording()
    rec.frame_ids[1] = 0
    with pytest.raises(RecordingError, match="duplicate frame ids"):
        rec.validate()


def test_not_a_recording(tmp_path: Path) -> None:
    path = tmp_path / "x.npz"
    np.savez(path, something=np.zeros(3))
    with pytest.raises(RecordingError, match="missing '__meta__'"):
        Recording.load(path)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(RecordingError, match="not a readable"):
        Recording.load(tmp_path / "junk.npz")
