"""Cost probes: what a model (or a link) costs on this box, measured, never assumed.

Memory is the process RSS growth from loading the model and running it once (psutil);
delay is the median single-frame inference time after a warm-up. A probe that cannot
measure returns None for that figure rather than raising.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import psutil

log = logging.getLogger(__name__)

MB = 1024.0 * 1024.0


@dataclass(frozen=True)
class Cost:
    memory_mb: float | None
    delay_ms: float | None

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)

    def get(self, resource: str) -> float:
        value = getattr(self, resource)
        return 0.0 if value is None else float(value)


ZERO = Cost(0.0, 0.0)


def rss_bytes() -> int | None:
    try:
        return int(psutil.Process().memory_info().rss)
    except (psutil.Error, OSError) as exc:
        log.warning("RSS unavailable: %s", exc)
        return None


def memory_delta_mb(load: Callable[[], object]) -> float | None:
    """RSS growth caused by `load()` (which should load and run the model once)."""
    gc.collect()
    before = rss_bytes()
    load()
    after = rss_bytes()
    if before is None or after is None:
        return None
    return max(0.0, (after - before) / MB)


def median_delay_ms(run: Callable[[], object], warmup: int, runs: int) -> float | None:
    try:
        for _ in range(warmup):
            run()
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            run()
            times.append((time.perf_counter() - start) * 1e3)
    except Exception as exc:
        log.warning("delay probe failed: %s", exc)
        return None
    return float(np.median(times))
