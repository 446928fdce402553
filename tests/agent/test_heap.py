"""The C heap's policy (agent.heap): memory freed by an unload goes back to the OS at once,
also from a worker thread's arena, which malloc_trim alone does not release."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from agent.costs import MB, rss_bytes
from agent.heap import _glibc, configure_heap, release_free_heap, returning_memory

BLOCK_MB = 16

pytestmark = pytest.mark.skipif(_glibc() is None, reason="the heap policy is glibc's")


def allocate_in_a_thread(holder: list[np.ndarray]) -> None:
    """A model's buffer, allocated where models load: in their worker thread."""
    worker = threading.Thread(target=lambda: holder.append(np.ones(BLOCK_MB * 1024 * 128)))
    worker.start()
    worker.join()


def test_unloading_returns_a_thread_arenas_memory() -> None:
    assert configure_heap()
    held: list[np.ndarray] = []
    for _ in range(3):  # the second and later blocks come from the thread's arena
        release_free_heap()
        before = rss_bytes() / MB
        allocate_in_a_thread(held)
        loaded = rss_bytes() / MB
        assert loaded - before > 0.9 * BLOCK_MB  # counted in full, every time
        with returning_memory():
            held.clear()
        assert loaded - rss_bytes() / MB > 0.9 * BLOCK_MB  # and given back
