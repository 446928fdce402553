"""Cost probes: what a model (or a link) costs on this box, measured, never assumed.

Memory is the growth of one figure — chosen by the memory probe — caused by loading a model
and running it once. Probes sit behind one interface, registered by name
(`[profiling] memory_probe`, default `auto`):

- `rss`: the process resident set size (psutil); everywhere.
- `pss`: the proportional set size (psutil, Linux), fairer where pages are shared.
- `nvml`: host RSS plus this process's GPU memory as NVML reports it (`nvidia-ml-py`, extra
  `nvml`); only where NVML initialises and the box is not a Jetson/Tegra.
- `jetson`: host RSS plus `NvMapMemUsed` from /proc/meminfo (the GPU's share of the unified
  memory), and the GPU load from sysfs; only on a Jetson/Tegra.

`auto` picks jetson, then nvml, then pss, then rss, whichever is available first. Every
probe degrades to None for a figure it cannot read, never to an exception. The delay is the
single-frame inference time: warm-up runs excluded, then the median over a sliding window
of runs (what selection uses) and its p95 (`CostStats`).
"""

from __future__ import annotations

import gc
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import psutil

from agent.heap import release_free_heap
from agent.registry import Registry

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


def _rss_mb() -> float | None:
    rss = rss_bytes()
    return None if rss is None else rss / MB


# -- memory probes -------------------------------------------------------------------------
class MemoryProbe:
    """One memory figure (MB) whose growth is charged to the model being loaded."""

    name: ClassVar[str]

    def __init__(self, root: Path = Path("/")) -> None:
        self.root = root

    def available(self) -> bool:
        raise NotImplementedError

    def sample_mb(self) -> float | None:
        raise NotImplementedError

    def details(self) -> dict[str, float | None]:
        """Extra figures for the status (e.g. GPU load)."""
        return {}


# Built-in probes register here; plugins are files in agent/probes/.
PROBES: Registry[type[MemoryProbe]] = Registry("memory probe", key="name",
                                               package="agent.probes")


class RssProbe(MemoryProbe):
    name: ClassVar[str] = "rss"

    def available(self) -> bool:
        return rss_bytes() is not None

    def sample_mb(self) -> float | None:
        return _rss_mb()


class PssProbe(MemoryProbe):
    name: ClassVar[str] = "pss"

    def available(self) -> bool:
        return self.sample_mb() is not None

    def sample_mb(self) -> float | None:
        try:
            pss = getattr(psutil.Process().memory_full_info(), "pss", None)
        except (psutil.Error, OSError, NotImplementedError) as exc:
            log.debug("PSS unavailable: %s", exc)
            return None
        return None if pss is None else pss / MB


def is_tegra(root: Path = Path("/")) -> bool:
    """A Jetson/Tegra box, recognised from its release file, SoC family or device tree."""
    if (root / "etc/nv_tegra_release").exists():
        return True
    for path in ("sys/devices/soc0/family", "proc/device-tree/compatible",
                 "proc/device-tree/model"):
        try:
            text = (root / path).read_bytes().decode("utf-8", "replace").lower()
        except OSError:
            continue
        if "tegra" in text or "jetson" in text:
            return True
    return False


def read_meminfo_kb(root: Path, key: str) -> float | None:
    """One field of /proc/meminfo, in kB; None where the file or the field is missing."""
    try:
        lines = (root / "proc/meminfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name, _, rest = line.partition(":")
        if name.strip() == key:
            try:
                return float(rest.split()[0])
            except (IndexError, ValueError):
                return None
    return None


GPU_LOAD_FILES = ("sys/devices/gpu.0/load", "sys/devices/platform/gpu.0/load",
                  "sys/devices/platform/bus@0/17000000.gpu/load",
                  "sys/devices/platform/17000000.ga10b/load",
                  "sys/devices/platform/17000000.gv11b/load")


class JetsonProbe(MemoryProbe):
    """Unified memory: host RSS plus NvMapMemUsed (system-wide GPU allocations)."""

    name: ClassVar[str] = "jetson"

    def available(self) -> bool:
        return is_tegra(self.root)

    def nvmap_mb(self) -> float | None:
        kb = read_meminfo_kb(self.root, "NvMapMemUsed")
        return None if kb is None else kb / 1024.0

    def gpu_load(self) -> float | None:
        """GPU load in [0, 1] (sysfs reports per mille)."""
        candidates = [self.root / p for p in GPU_LOAD_FILES]
        candidates += sorted(self.root.glob("sys/devices/platform/*gpu*/load"))
        for path in candidates:
            try:
                return float(path.read_text().split()[0]) / 1000.0
            except (OSError, ValueError, IndexError):
                continue
        return None

    def sample_mb(self) -> float | None:
        rss, nvmap = _rss_mb(), self.nvmap_mb()
        if rss is None:
            return None
        return rss + (nvmap or 0.0)

    def details(self) -> dict[str, float | None]:
        return {"nvmap_mb": self.nvmap_mb(), "gpu_load": self.gpu_load()}


class NvmlProbe(MemoryProbe):
    """Host RSS plus this process's GPU memory on every NVML device."""

    name: ClassVar[str] = "nvml"

    def __init__(self, root: Path = Path("/")) -> None:
        super().__init__(root)
        self._nvml: Any = None

    def _init(self) -> Any:
        if self._nvml is None:
            try:
                import pynvml  # nvidia-ml-py, the optional extra `nvml`

                pynvml.nvmlInit()
                if pynvml.nvmlDeviceGetCount() < 1:
                    return None
                self._nvml = pynvml
            except Exception as exc:  # no library, no driver, no device: all mean "none"
                log.debug("NVML unavailable: %s", exc)
                return None
        return self._nvml

    def available(self) -> bool:
        return not is_tegra(self.root) and self._init() is not None

    def gpu_mb(self) -> float | None:
        nvml = self._init()
        if nvml is None:
            return None
        pid, used = psutil.Process().pid, 0.0
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    if proc.pid == pid and proc.usedGpuMemory is not None:
                        used += proc.usedGpuMemory / MB
        except Exception as exc:
            log.debug("NVML query failed: %s", exc)
            return None
        return used

    def sample_mb(self) -> float | None:
        rss, gpu = _rss_mb(), self.gpu_mb()
        return None if rss is None else rss + (gpu or 0.0)

    def details(self) -> dict[str, float | None]:
        return {"gpu_mb": self.gpu_mb()}


for _builtin in (RssProbe, PssProbe, NvmlProbe, JetsonProbe):
    PROBES.register(_builtin)

AUTO_ORDER = ("jetson", "nvml", "pss", "rss")


def make_probe(name: str = "auto", root: Path = Path("/")) -> MemoryProbe:
    """The named probe, or the first available one for `auto` (or where the named one is not
    available on this box, with a warning)."""
    if name != "auto":
        probe = PROBES[name](root)
        if probe.available():
            return probe
        log.warning("memory probe %r is not available here; choosing one automatically", name)
    for candidate in AUTO_ORDER:
        probe = PROBES[candidate](root)
        if probe.available():
            return probe
    return RssProbe(root)


def warm_up_runtime(files: list[Path]) -> object | None:
    """Load the smallest of these .tflite files and keep it: the runtime's one-off allocations
    (kernels, the XNNPACK delegate) are then not charged to whichever model is measured first.
    Hold the returned object until measuring is done."""
    from links_tflite.interpreter import TFLiteRunner

    existing = [f for f in files if f.is_file()]
    return TFLiteRunner(min(existing, key=lambda f: f.stat().st_size)) if existing else None


def memory_delta_mb(load: Callable[[], object], probe: MemoryProbe | None = None) -> float | None:
    """Growth of the probe's figure caused by `load()` (which should load and run the model
    once). `load`'s own exceptions propagate: the caller decides what a failed load means."""
    probe = probe or RssProbe()
    gc.collect()
    release_free_heap()
    before = probe.sample_mb()
    load()
    after = probe.sample_mb()
    if before is None or after is None:
        return None
    return max(0.0, after - before)


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


# -- running figures -----------------------------------------------------------------------
@dataclass
class CostStats:
    """One model's or link's measured cost: memory (EMA over loads) and delay (the median of
    the last `window` runs, the first `warmup` runs after each load excluded; p95 beside it).

    Selection reads the median, not an average: on a busy box one run in a few takes several
    times the others (another process had the core), and an EMA follows the last few runs, so
    a plan made right after such runs would drop a model that fits (status.py measured a
    0.1 ms model read 0.10, 0.59 and 0.09 ms five seconds apart by its EMA). `window` sets
    how soon a lasting change (a slower clock) shows: after half the window's runs."""

    alpha: float = 0.2  # the memory EMA's weight of a new load
    window: int = 200
    warmup: int = 3
    memory_mb: float | None = None
    runs: int = 0
    _to_skip: int = 0
    _recent: deque[float] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self._recent = deque(self._recent, maxlen=self.window)  # bounded, no trimming loop

    def begin_load(self) -> None:
        """A (re)load: the next `warmup` runs are warm-up, not counted."""
        self._to_skip = self.warmup

    def record_memory(self, memory_mb: float | None) -> None:
        if memory_mb is not None:
            self.memory_mb = memory_mb if self.memory_mb is None else (
                self.alpha * memory_mb + (1 - self.alpha) * self.memory_mb)

    def add_delay(self, ms: float) -> None:
        if self._to_skip > 0:
            self._to_skip -= 1
            return
        self.runs += 1
        self._recent.append(ms)

    def set_delay(self, ms: float | None) -> None:
        """A figure from elsewhere (put back, or given) in place of the recent runs: it counts
        as one run, so the runs that follow move the median away from it one by one."""
        self._recent.clear()
        if ms is not None:
            self._recent.append(ms)

    @property
    def delay_ms(self) -> float | None:
        """What selection reads: the median of the recent runs."""
        return self.percentile(50)

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(list(self._recent), q)) if self._recent else None

    def recent(self) -> tuple[float, ...]:
        """The runs the median is taken over, oldest first."""
        return tuple(self._recent)

    def cost(self) -> Cost:
        return Cost(self.memory_mb, self.delay_ms)

    def to_dict(self) -> dict[str, float | int | None]:
        def rounded(v: float | None) -> float | None:
            return None if v is None else round(v, 6)

        return {"memory_mb": rounded(self.memory_mb), "delay_ms": rounded(self.delay_ms),
                "delay_p50_ms": rounded(self.percentile(50)),
                "delay_p95_ms": rounded(self.percentile(95)), "runs": self.runs}
