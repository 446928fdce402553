"""What keeping the profiling windows' rows costs, and how long an upload takes: the window
store (agent/windowstore.py) fed windows of random outputs (the digits models' widths, 3
models, 16 floats a row: random values, so the file compresses little), then uploaded
(agent/uploads.py) through a real Mosquitto on loopback with its PUBACK waits.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/window_store.py [ROWS ...]

Prints per ring size: the loop's cost of handing a window over (`add`), one merge and write
of the full ring (what the store's thread does at a window's end), the file's size, and the
upload's time and chunks at the default 128 KiB.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from agent.config import MqttConfig
from agent.transport import Publisher
from agent.uploads import UploadContext, Uploader
from agent.windowstore import WindowFrame, WindowStore
from devtools.broker import LocalBroker
from links_tflite.tasks import TaskSpec

TASKS = {"digit": TaskSpec("single_label", 10), "parity": TaskSpec("single_label", 2),
         "inkbox": TaskSpec("localization", 4)}
WINDOW = 20  # frames per window ([profiling] sample_frames' default)


def window(rng: np.random.Generator) -> list[WindowFrame]:
    return [WindowFrame(0, time.time(), {m: rng.random(s.dim, dtype=np.float32)
                                         for m, s in TASKS.items()}) for _ in range(WINDOW)]


def main() -> int:
    sizes = [int(a) for a in sys.argv[1:]] or [2000, 50_000]
    rng = np.random.default_rng(0)
    broker = LocalBroker().start()
    publisher = Publisher(MqttConfig(port=broker.port), "bench")
    publisher.connect(10.0)
    try:
        for rows in sizes:
            folder = Path(tempfile.mkdtemp(prefix="mlink-windows-"))
            store = WindowStore(folder, rows, "bench", ("0",))
            windows = [window(rng) for _ in range(rows // WINDOW + 1)]
            with store._write_lock:  # hold the writer: `add` alone, then one merge
                adds = []
                for frames in windows:
                    start = time.perf_counter()
                    store.add(TASKS, frames)
                    adds.append((time.perf_counter() - start) * 1e3)
            store.flush()
            writes = []
            for frames in windows[:5]:  # a window's end with the ring full
                with store._write_lock:
                    store.add(TASKS, frames)
                start = time.perf_counter()
                store.flush()
                writes.append((time.perf_counter() - start) * 1e3)
            size = store.path.stat().st_size
            uploader = Uploader(store, publisher, 128 * 1024, lambda: UploadContext(
                (), {"name": "b", "version": "0" * 16}, dict(TASKS)))
            start = time.perf_counter()
            upload = uploader.prepare("bench")
            uploader.publish(upload)
            upload_s = time.perf_counter() - start
            print(f"rows {rows}: add {statistics.median(adds):.3f} ms a window; merge+write "
                  f"{statistics.median(writes):.1f} ms (median of 5); file {size / 1024:.0f} "
                  f"KiB; upload {upload_s * 1e3:.0f} ms, {upload.chunks} chunks")
            store.close()
    finally:
        publisher.close(5.0)
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
