"""Cost probes: each degrades to None, never to an exception; the Jetson probe parses real
procfs/sysfs layouts, here under a fake root; delay statistics exclude the warm-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.costs import (
    PROBES,
    CostStats,
    JetsonProbe,
    NvmlProbe,
    RssProbe,
    is_tegra,
    make_probe,
    memory_delta_mb,
    read_meminfo_kb,
)

MEMINFO = """MemTotal:        7999760 kB
MemFree:          512000 kB
NvMapMemFree:      43008 kB
NvMapMemUsed:     204800 kB
"""


def fake_jetson(root: Path, load: str | None = "532\n", model: bytes = b"NVIDIA Jetson Orin Nano\0"
                ) -> Path:
    (root / "proc/device-tree").mkdir(parents=True)
    (root / "proc/device-tree/model").write_bytes(model)
    (root / "proc/meminfo").write_text(MEMINFO)
    if load is not None:
        gpu = root / "sys/devices/platform/17000000.ga10b"
        gpu.mkdir(parents=True)
        (gpu / "load").write_text(load)
    return root


def test_jetson_probe_reads_fake_procfs_and_sysfs(tmp_path: Path) -> None:
    root = fake_jetson(tmp_path)
    assert is_tegra(root)
    assert read_meminfo_kb(root, "NvMapMemUsed") == 204800
    probe = JetsonProbe(root)
    assert probe.available()
    assert probe.nvmap_mb() == pytest.approx(200.0)
    assert probe.gpu_load() == pytest.approx(0.532)
    sample = probe.sample_mb()
    rss = RssProbe().sample_mb()
    assert sample is not None and rss is not None and sample == pytest.approx(rss + 200.0, abs=5)
    assert make_probe("auto", root).name == "jetson"
    # NVML is never used on a Jetson, even where the library would load
    assert not NvmlProbe(root).available()


def test_jetson_probe_degrades_to_none(tmp_path: Path) -> None:
    root = fake_jetson(tmp_path, load=None)
    (root / "proc/meminfo").write_text("MemTotal: 10 kB\nNvMapMemUsed: garbage\n")
    probe = JetsonProbe(root)
    assert probe.nvmap_mb() is None and probe.gpu_load() is None
    assert probe.details() == {"nvmap_mb": None, "gpu_load": None}
    assert probe.sample_mb() is not None  # host memory is still there
    (root / "proc/meminfo").unlink()
    assert read_meminfo_kb(root, "NvMapMemUsed") is None


def test_not_a_jetson(tmp_path: Path) -> None:
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_bytes(b"Raspberry Pi 4 Model B\0")
    assert not is_tegra(tmp_path) and not JetsonProbe(tmp_path).available()
    assert not is_tegra(tmp_path / "missing")
    assert make_probe("jetson", tmp_path).name != "jetson"  # falls back, with a warning
    soc = tmp_path / "sys/devices/soc0"
    soc.mkdir(parents=True)
    (soc / "family").write_text("Tegra\n")
    assert is_tegra(tmp_path)


class FakeNvml:
    """The part of nvidia-ml-py's API the probe uses: two GPUs, this process on the second
    (NVML itself needs a driver and a GPU, which CI has not)."""

    def __init__(self, pid: int, used_mb: float | None, fail: bool = False) -> None:
        self.pid, self.used, self.fail = pid, used_mb, fail

    def nvmlInit(self) -> None:  # NVML's own names, kept
        pass

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list:
        if self.fail:
            raise RuntimeError("NVML_ERROR_GPU_IS_LOST")
        from types import SimpleNamespace

        used = None if self.used is None else self.used * 1024 * 1024
        return [SimpleNamespace(pid=self.pid + 1, usedGpuMemory=999 * 1024 * 1024),
                *([SimpleNamespace(pid=self.pid, usedGpuMemory=used)] if handle else [])]


def test_nvml_probe_adds_this_process_gpu_memory(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import sys

    fake = FakeNvml(os.getpid(), 300.0)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    probe = NvmlProbe(tmp_path)  # not a Jetson
    assert probe.available() and make_probe("auto", tmp_path).name == "nvml"
    assert probe.gpu_mb() == pytest.approx(300.0)  # other processes' memory is not ours
    rss = RssProbe().sample_mb()
    sample = probe.sample_mb()
    assert rss is not None and sample is not None and sample == pytest.approx(rss + 300.0, abs=5)
    fake.used = None  # NVML may not know the figure (e.g. under MIG): counted as none
    assert probe.gpu_mb() == 0.0
    fake.fail = True  # a lost GPU: the figure degrades to None, the host part stays
    assert probe.gpu_mb() is None and probe.details() == {"gpu_mb": None}
    assert probe.sample_mb() is not None


def test_nvml_absent_is_not_available(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails, as without the extra
    assert not NvmlProbe(tmp_path).available()
    assert make_probe("nvml", tmp_path).name in ("pss", "rss")


@pytest.mark.parametrize("name", sorted(PROBES))
def test_every_probe_answers_without_raising(name: str, tmp_path: Path) -> None:
    probe = PROBES[name](tmp_path)
    available = probe.available()
    value = probe.sample_mb()
    assert value is None or value >= 0
    assert isinstance(probe.details(), dict)
    if available:
        assert value is not None


def test_memory_delta_sees_an_allocation() -> None:
    held: list[bytearray] = []
    delta = memory_delta_mb(lambda: held.append(bytearray(b"x" * (32 * 1024 * 1024))))
    assert delta is not None and 28 <= delta <= 40


def test_cost_stats_exclude_warmup_and_track_percentiles() -> None:
    stats = CostStats(alpha=0.5, window=4, warmup=2)
    stats.begin_load()
    for ms in (100.0, 90.0, 1.0, 2.0, 3.0, 4.0, 5.0):
        stats.add_delay(ms)
    assert stats.runs == 5  # the two warm-up runs are left out
    assert stats.percentile(50) == pytest.approx(3.5)  # window: the last four
    assert stats.cost().delay_ms == pytest.approx(3.5)  # selection reads the median
    stats.record_memory(10.0)
    stats.record_memory(20.0)
    assert stats.memory_mb == pytest.approx(15.0)
    assert stats.to_dict()["delay_p95_ms"] is not None


def test_a_few_slow_runs_do_not_move_the_delay_selection_reads() -> None:
    """On a busy box one run in a few takes several times the others: the figure a plan is
    made with stays the model's usual time (an average of the last runs would not)."""
    stats = CostStats(window=20, warmup=0)
    for ms in [4.0] * 16 + [30.0, 4.0, 25.0, 40.0]:
        stats.add_delay(ms)
    assert stats.cost().delay_ms == pytest.approx(4.0)
    for _ in range(12):  # a lasting change shows once it is over half the window's runs
        stats.add_delay(9.0)
    assert stats.cost().delay_ms == pytest.approx(9.0)


def test_a_figure_put_back_counts_as_one_run() -> None:
    stats = CostStats(window=20, warmup=0)
    for ms in (1.0, 1.0, 1.0):
        stats.add_delay(ms)
    stats.set_delay(6.0)
    assert stats.cost().delay_ms == 6.0 and stats.runs == 3
    stats.add_delay(2.0)
    stats.add_delay(2.0)
    assert stats.cost().delay_ms == 2.0  # the runs that follow outvote it
    stats.set_delay(None)
    assert stats.cost().delay_ms is None


def test_reloads_are_measured_after_large_frees() -> None:
    """After a large free, glibc reuses the freed heap (and raises its mmap threshold), so a
    model loaded again would seem to cost nothing; the probe trims the heap first."""
    import numpy as np

    from agent.costs import memory_delta_mb

    held: list[np.ndarray] = []
    measured = []
    for _ in range(4):
        freed = np.ones(2 * 1024 * 1024)  # 16 MB
        del freed
        measured.append(memory_delta_mb(lambda: held.append(np.ones(2 * 1024 * 1024))))
        held.clear()
    assert all(m is not None and m >= 14.0 for m in measured), measured
