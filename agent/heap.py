"""The C heap's policy: memory a model frees goes back to the OS, and frames stay fast.

glibc serves blocks under its mmap threshold from per-thread arenas and keeps freed memory
there until the arena's free top exceeds the trim threshold. By default both thresholds rise
after a large block is freed (up to 32 and 64 MiB). For the agent that meant: a model's
buffers, mmapped when first loaded, came from its worker thread's arena on reload, and on
unload stayed there — malloc_trim releases free chunks and the main arena's top, not another
arena's top. The box never got the memory back, and the next reload read as free (0.07 MB
for a 16 MB model).

Fixing the thresholds low would cure that and cost every frame an mmap and its page faults
(a 224x224 float frame: 0.6 ms instead of 0.04). So the steady state keeps glibc's ceilings
(frames reuse the heap), and only an unload runs with a low trim threshold, then trims
(`returning_memory`). All of it is a no-op where the C library is not glibc.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
from collections.abc import Iterator

# glibc's mallopt parameters (malloc.h) and the ceilings of its dynamic thresholds (64-bit)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 2 * MMAP_THRESHOLD_BYTES
UNLOAD_TRIM_BYTES = 128 * 1024  # glibc's starting trim threshold


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 - both must exist
    except (OSError, AttributeError):
        return None
    return libc


def configure_heap() -> bool:
    """Fix the thresholds at glibc's ceilings (where its dynamic rule ends up anyway), so
    that `returning_memory` can lower the trim threshold for an unload and set it back.
    False where the C library is not glibc."""
    libc = _glibc()
    return bool(libc and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
                and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))


def release_free_heap() -> None:
    """Give free chunks and the main arena's free top back to the OS (malloc_trim)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@contextlib.contextmanager
def returning_memory() -> Iterator[None]:
    """Inside, every free that reaches an arena's top gives it back to the OS; after, free
    chunks are trimmed too. `ModelAdapter.unload` runs in it."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_TRIM_THRESHOLD, UNLOAD_TRIM_BYTES)
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
            libc.malloc_trim(0)
