"""The profiling windows' rows kept on the box (agent/windowstore.py): a ring of the newest
rows, written as a recording of the bundle's tasks, that survives a restart; what is not kept
is counted."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from agent.windowstore import WindowFrame, WindowStore
from links_tflite.recording import Recording
from links_tflite.tasks import TaskSpec

TASKS = {"digit": TaskSpec("single_label", 3), "inkbox": TaskSpec("localization", 4)}
CAMERAS = ("gate", "yard")


def frames(n: int, start: int = 0, **outputs: np.ndarray | None) -> list[WindowFrame]:
    """n window frames; frame i's outputs are i-valued, per model unless given."""
    made = []
    for i in range(start, start + n):
        values = {"digit": np.full(3, i, np.float32), "inkbox": np.full((1, 4), i, np.float32)}
        for model, value in outputs.items():
            if value is None:
                values.pop(model)
            else:
                values[model] = value
        made.append(WindowFrame(camera=i % 2, ts=1000.0 + i, outputs=values))
    return made


def store(folder: Path, max_rows: int = 100, cameras: tuple[str, ...] = CAMERAS
          ) -> WindowStore:
    return WindowStore(folder, max_rows, "replay", cameras)


def test_the_newest_rows_are_kept_as_a_recording_and_the_oldest_counted(tmp_path: Path
                                                                        ) -> None:
    kept = store(tmp_path)
    for window in range(3):
        kept.add(TASKS, frames(60, start=60 * window))
    path = kept.flush()
    assert path is not None and kept.rows == 100
    recording = Recording.load(path)
    assert recording.tasks == TASKS and recording.cameras == list(CAMERAS)
    assert recording.outputs["digit"][:, 0].tolist() == list(range(80, 180))
    assert np.all(np.diff(recording.frame_ids) == 1)  # the store's row numbers, in order
    assert recording.outputs["inkbox"].shape == (100, 4)  # each output flattened to its width
    assert recording.ts[0] == 1080.0 and list(recording.camera_ids[:2]) == [0, 1]
    report = kept.to_dict()
    assert report["dropped"] == 80 and report["rows"] == 100 and report["writes"] >= 1
    kept.close()


def test_frames_without_every_model_s_finite_output_are_not_kept_but_counted(tmp_path: Path
                                                                             ) -> None:
    kept = store(tmp_path)
    kept.add(TASKS, frames(2) + frames(1, inkbox=None) + frames(1, digit=np.full(3, np.nan))
             + frames(1, digit=np.zeros(5)))
    kept.flush()
    assert kept.rows == 2 and kept.to_dict()["incomplete"] == 3
    kept.close()


def test_the_rows_survive_a_restart_and_their_numbers_go_on(tmp_path: Path) -> None:
    first = store(tmp_path)
    first.add(TASKS, frames(30))
    first.close()
    again = store(tmp_path)
    assert again.rows == 30 and again.tasks == TASKS
    again.add(TASKS, frames(10))  # the source's frames start again after a restart
    recording = Recording.load(again.flush())  # type: ignore[arg-type]
    assert list(recording.frame_ids) == list(range(40))  # unique, in recording order
    again.close()
    # a smaller ring after a restart keeps the newest; other cameras' rows go
    smaller = store(tmp_path, max_rows=25)
    assert smaller.rows == 25 and smaller.to_dict()["dropped"] == 15
    smaller.close()
    other = store(tmp_path, cameras=("0",))
    assert other.rows == 0 and other.to_dict()["discarded"] == 25
    assert not (tmp_path / "rows.npz").exists()


def test_rows_of_other_tasks_are_dropped_when_the_tasks_change(tmp_path: Path) -> None:
    kept = store(tmp_path)
    kept.add(TASKS, frames(20))
    kept.retask(TASKS)  # the same tasks: nothing changes
    assert kept.rows == 20
    only_digit = {"digit": TASKS["digit"]}
    kept.add(only_digit, frames(5))  # e.g. a model disabled, or another bundle
    recording = Recording.load(kept.flush())  # type: ignore[arg-type]
    assert recording.tasks == only_digit and len(recording) == 5
    assert kept.to_dict()["discarded"] == 20
    kept.retask(TASKS)
    assert kept.rows == 0 and kept.flush() is None and kept.to_dict()["discarded"] == 25
    kept.close()


def test_an_unreadable_file_is_dropped_and_counted(tmp_path: Path) -> None:
    first = store(tmp_path / "torn")
    first.add(TASKS, frames(30))
    first.close()
    whole = (tmp_path / "torn" / "rows.npz").read_bytes()
    for name, data in (("garbage", b"not a zip"), ("torn", whole[:len(whole) // 2])):
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / "rows.npz").write_bytes(data)
        kept = store(tmp_path / name)
        assert kept.rows == 0 and kept.to_dict()["discarded"] == 1, name
        assert not (tmp_path / name / "rows.npz").exists()
        kept.close()


def test_the_write_happens_on_the_store_s_own_thread(tmp_path: Path) -> None:
    """`add` (the loop's side, at a window's end) only queues; the writer thread writes; a
    writer that falls behind never holds more than `max_rows` queued rows."""
    kept = store(tmp_path)
    kept.add(TASKS, frames(10))
    deadline = time.monotonic() + 10
    while kept.to_dict()["writes"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (tmp_path / "rows.npz").exists() and kept.rows == 10
    kept.close()
    slow = store(tmp_path / "slow")
    with slow._write_lock:  # the writer is busy
        for window in range(5):
            slow.add(TASKS, frames(40, start=40 * window))
        assert sum(len(f) for _, f in slow._pending) <= 100 + 40
        assert slow.to_dict()["dropped"] >= 60
    assert len(Recording.load(slow.flush())) == 100  # type: ignore[arg-type]
    slow.close()

