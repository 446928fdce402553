"""The profiling windows' rows, kept on the box for relinking (`[fleet] keep_windows`).

In a profiling window every model runs (agent.window), so each window frame holds every
model's exact output: what links are trained on. At each window's end the window hands its
frames to the `WindowStore`, which keeps the newest `window_rows` of them in
`<state dir>/windows/rows.npz`, a `links_tflite.recording.Recording` of the bundle's tasks
(docs/formats.md), so that they survive a restart and can be uploaded (agent.uploads):

- a row is a frame on which every model of the store's tasks gave a finite output of its
  task's width; a frame without one is not kept (counted: `incomplete`);
- `frame_ids` are the store's own row numbers, increasing in recording order across windows
  and restarts (a looping replay or a restart repeats the source's frame ids, and a
  recording's frame ids are unique); `ts` is the frame's `Frame.ts`; `camera_ids` and
  `cameras` say which camera saw it;
- the store is a ring: beyond `window_rows` the oldest rows go (counted: `dropped`);
- rows recorded under other tasks (another bundle, models enabled or disabled) are dropped
  when the tasks change (counted: `discarded`), as is a stored file that cannot be read.

`add` only queues the window's frames (the loop's thread, at the window's end); the merge and
the file's write happen on the store's own writer thread, or at once in `flush` (an upload,
the stop). One write costs at most `window_rows` rows.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from links_tflite.recording import Recording, RecordingError
from links_tflite.tasks import TaskSpec

log = logging.getLogger(__name__)

ROWS_FILE = "rows.npz"


@dataclass(frozen=True)
class WindowFrame:
    """One window frame: its camera, time and every model's exact output on it."""

    camera: int
    ts: float
    outputs: Mapping[str, np.ndarray]


@dataclass
class StoreStats:
    dropped: int = 0  # the oldest rows, beyond `window_rows`
    discarded: int = 0  # rows recorded under other tasks, or in an unreadable file
    incomplete: int = 0  # window frames a model gave no (finite) output on: not kept
    writes: int = 0
    write_errors: int = 0
    last_write_ms: float = 0.0
    last_error: str | None = None


class WindowStore:
    """The newest `max_rows` window rows of one box, in memory and in
    `<folder>/rows.npz`; thread-safe."""

    def __init__(self, folder: Path, max_rows: int, workload: str,
                 cameras: Sequence[str]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / ROWS_FILE
        self.max_rows = max_rows
        self.workload = workload
        self.cameras = list(cameras)
        self.stats = StoreStats()
        self._lock = threading.Lock()  # the fields below and `stats`
        self._write_lock = threading.Lock()  # one merge-and-write at a time
        self._tasks: dict[str, TaskSpec] = {}
        # the windows queued by `add` and not yet merged, with their tasks
        self._pending: list[tuple[dict[str, TaskSpec], list[WindowFrame]]] = []
        self._rows: Recording | None = None  # what the file holds (None: no row)
        self._next_row = 0
        self._dirty = False
        self._wake = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self.folder.mkdir(parents=True, exist_ok=True)
        self._load()

    # -- what is kept ------------------------------------------------------------------------
    @property
    def rows(self) -> int:
        """Rows kept, those queued and not yet written included (at most `max_rows`)."""
        with self._lock:
            stored = len(self._rows) if self._rows is not None else 0
            queued = sum(len(frames) for _, frames in self._pending)
        return min(stored + queued, self.max_rows)

    @property
    def tasks(self) -> dict[str, TaskSpec]:
        with self._lock:
            return dict(self._tasks)

    def to_dict(self) -> dict[str, Any]:
        """For the status (`fleet.windows`)."""
        rows = self.rows
        with self._lock:
            s = self.stats
            return {"rows": rows, "max_rows": self.max_rows, "dropped": s.dropped,
                    "discarded": s.discarded, "incomplete": s.incomplete,
                    "writes": s.writes, "write_errors": s.write_errors,
                    "last_write_ms": round(s.last_write_ms, 3), "last_error": s.last_error}

    # -- the loop's side ---------------------------------------------------------------------
    def add(self, tasks: Mapping[str, TaskSpec], frames: Sequence[WindowFrame]) -> None:
        """A window's frames, recorded under `tasks` (the bundle's tasks of the models that
        run): queued for the writer. Cheap: no copy, no disk."""
        if not frames or not tasks:
            return
        with self._lock:
            pending = self._pending
            pending.append((dict(tasks), list(frames)))
            queued = sum(len(f) for _, f in pending)
            while queued - len(pending[0][1]) >= self.max_rows:  # the writer fell behind
                _, gone = pending.pop(0)
                queued -= len(gone)
                self.stats.dropped += len(gone)
            self._dirty = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="mlink-windows",
                                                daemon=True)
                self._thread.start()
        self._wake.set()

    def retask(self, tasks: Mapping[str, TaskSpec]) -> None:
        """Drop the rows recorded under other tasks than `tasks` (counted `discarded`)."""
        with self._write_lock:
            self._merge()
            if self._rows is not None and dict(tasks) != self._tasks:
                self._discard(f"recorded under other tasks ({sorted(self._tasks)})")

    # -- writing -----------------------------------------------------------------------------
    def flush(self) -> Path | None:
        """Merge and write what is queued, now; the file of the rows (None: no row)."""
        with self._write_lock:
            self._merge()
            return self.path if self._rows is not None else None

    def snapshot(self) -> tuple[bytes, int, dict[str, TaskSpec]] | None:
        """The rows file's bytes, its rows and their tasks, with what is queued written first
        (None: no row kept); no window's write comes between them."""
        with self._write_lock:
            self._merge()
            if self._rows is None:
                return None
            return self.path.read_bytes(), len(self._rows), dict(self._tasks)

    def close(self) -> None:
        """Write what is queued and end the writer thread."""
        self._closing = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(30.0)
        with contextlib.suppress(Exception):  # logged and counted where it failed
            self.flush()

    def _work(self) -> None:
        while not self._closing:
            self._wake.wait(1.0)
            self._wake.clear()
            if self._dirty:
                try:
                    self.flush()
                except Exception:  # counted in write_errors, retried
                    time.sleep(1.0)

    def _merge(self) -> None:
        """Under `_write_lock`: the queued windows into the rows, the newest `max_rows` of
        them written to the file."""
        with self._lock:
            pending, self._pending = self._pending, []
            self._dirty = False
        if not pending:
            return
        started = time.perf_counter()
        rows = self._rows
        for tasks, frames in pending:
            if tasks != self._tasks:
                if rows is not None:
                    self._rows = rows
                    self._discard(f"recorded under other tasks ({sorted(self._tasks)})")
                    rows = None
                self._tasks = tasks
            rows = self._append(rows, tasks, frames)
        if rows is None or rows is self._rows:
            return
        try:
            rows.save(self.path)
        except Exception as exc:
            with self._lock:
                self.stats.write_errors += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
            log.error("profiling windows' rows not written to %s: %s (kept in memory, written "
                      "again at the next window)", self.path, exc)
            self._rows = rows
            raise
        self._rows = rows
        with self._lock:
            self.stats.writes += 1
            self.stats.last_write_ms = (time.perf_counter() - started) * 1e3

    def _append(self, rows: Recording | None, tasks: dict[str, TaskSpec],
                frames: list[WindowFrame]) -> Recording | None:
        """`rows` with the complete ones of `frames` after them, the newest `max_rows`."""
        kept = [f for f in frames if _complete(f, tasks)]
        with self._lock:
            self.stats.incomplete += len(frames) - len(kept)
        if not kept:
            return rows
        new_ids = np.arange(self._next_row, self._next_row + len(kept), dtype=np.int64)
        self._next_row += len(kept)
        outputs = {m: np.stack([np.asarray(f.outputs[m], dtype=np.float32).reshape(-1)
                                for f in kept]) for m in tasks}
        ts = np.asarray([f.ts for f in kept], dtype=np.float64)
        cameras = np.asarray([f.camera for f in kept], dtype=np.int64)
        if rows is not None:
            new_ids = np.concatenate([rows.frame_ids, new_ids])
            ts = np.concatenate([rows.ts, ts])
            assert rows.camera_ids is not None
            cameras = np.concatenate([rows.camera_ids, cameras])
            outputs = {m: np.concatenate([rows.outputs[m], v]) for m, v in outputs.items()}
        over = max(0, len(new_ids) - self.max_rows)
        if over:
            with self._lock:
                self.stats.dropped += over
        return Recording(workload=self.workload, frame_ids=new_ids[over:], ts=ts[over:],
                         tasks=dict(tasks), outputs={m: v[over:] for m, v in outputs.items()},
                         camera_ids=cameras[over:], cameras=list(self.cameras))

    def _discard(self, why: str) -> None:
        """Drop every row kept (and the file), counted."""
        gone = len(self._rows) if self._rows is not None else 0
        with self._lock:
            self.stats.discarded += gone
        log.info("profiling windows: %d rows dropped: %s", gone, why)
        self._rows = None
        self.path.unlink(missing_ok=True)

    def _load(self) -> None:
        """The rows of an earlier run, where the file is there and readable."""
        if not self.path.exists():
            return
        try:
            rows = Recording.load(self.path)
            if rows.camera_ids is None:
                raise RecordingError("no camera_ids")
        except Exception as exc:  # a torn or foreign file: numpy's and zipfile's errors too
            log.warning("profiling windows: %s cannot be read (%s): dropped", self.path, exc)
            with self._lock:
                self.stats.discarded += 1
            self.path.unlink(missing_ok=True)
            return
        if rows.cameras != self.cameras:
            log.info("profiling windows: %d rows of other cameras (%s) dropped", len(rows),
                     rows.cameras)
            self.stats.discarded += len(rows)
            self.path.unlink(missing_ok=True)
            return
        over = max(0, len(rows) - self.max_rows)  # `window_rows` lowered since
        if over:
            rows = rows.subset(np.arange(over, len(rows)))
            self.stats.dropped += over
            rows.save(self.path)  # what an upload sends is what the store holds
        self._rows, self._tasks = rows, dict(rows.tasks)
        self._next_row = int(rows.frame_ids.max()) + 1 if len(rows) else 0
        log.info("profiling windows: %d rows kept from an earlier run", len(rows))


def _complete(frame: WindowFrame, tasks: Mapping[str, TaskSpec]) -> bool:
    """Every model of `tasks` gave an output of its task's width, finite."""
    for model, spec in tasks.items():
        output = frame.outputs.get(model)
        if output is None:
            return False
        values = np.asarray(output)
        if values.size != spec.output_width or not np.all(np.isfinite(values)):
            return False
    return True
