"""The agent's memory probes on a real NVIDIA GPU: does `nvml` charge a model its GPU memory?

The agent charges each model the growth of the memory probe's figure across its load and
first inference (agent.costs.memory_delta_mb). On a box with an NVIDIA GPU (not a Jetson)
`auto` picks the `nvml` probe: host RSS plus this process's GPU memory as NVML lists it. This
script loads GPU models the way a Python-adapter model would (PyTorch, when installed) and
prints, side by side, what the `nvml` and `rss` probes charge for each step, next to what the
step allocated and to NVML's raw view (this process's entry in the device's process list, the
device's used memory). It also checks that another process's GPU memory is not charged.

Run on a machine with an NVIDIA GPU, PyTorch and nvidia-ml-py (the `nvml` extra):

    PYTHONPATH=$PWD python3 benchmarks/gpu_memory.py --out gpu-memory.json

Without a GPU it says so and exits 0. Results: benchmarks/results/gpu-memory.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.costs import MB, NvmlProbe, RssProbe, make_probe, memory_delta_mb

OTHER_PROCESS_MB = 2048  # held by a second process while this one samples
HOLD_SCRIPT = f"""
import sys, time, torch
x = torch.empty({OTHER_PROCESS_MB} * 2**20, dtype=torch.uint8, device="cuda")
torch.cuda.synchronize()
print("ready", flush=True)
sys.stdin.readline()
"""


def gpu_warm_up() -> None:
    """The kind of `warm_up` entry a box with PyTorch models on a GPU configures
    (`warm_up = ["benchmarks.gpu_memory:gpu_warm_up"]`, or the user's own): the CUDA context
    and the cuDNN and cuBLAS libraries, which the first convolution and matrix product load."""
    import torch

    with torch.no_grad():
        x = torch.rand(1, 3, 16, 16, device="cuda")
        torch.nn.functional.conv2d(x, torch.rand(4, 3, 3, 3, device="cuda"), padding=1)
        torch.rand(8, 8, device="cuda") @ torch.rand(8, 8, device="cuda")
    torch.cuda.synchronize()


def nvml_view(nvml: Any) -> dict[str, Any]:
    """NVML's raw figures: the device's used memory and every compute process it lists."""
    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    procs = [{"pid": p.pid, "used_mb": None if p.usedGpuMemory is None
              else p.usedGpuMemory / MB}
             for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle)]
    return {"device_used_mb": nvml.nvmlDeviceGetMemoryInfo(handle).used / MB,
            "processes": procs, "own_pid": os.getpid()}


def step(name: str, allocated_mb: float, load: Callable[[], object],
         nvml_probe: NvmlProbe, nvml: Any) -> dict[str, Any]:
    """One load charged by the nvml probe; the rss probe's charge of the same load is the
    host part of it (`host_mb` in the nvml probe's details before and after)."""
    rss_before = RssProbe().sample_mb()
    gpu_before = nvml_probe.gpu_mb()
    device_before = nvml_view(nvml)["device_used_mb"]
    charged = memory_delta_mb(load, nvml_probe)
    rss_after = RssProbe().sample_mb()
    gpu_after = nvml_probe.gpu_mb()
    view = nvml_view(nvml)
    return {"step": name, "allocated_mb": allocated_mb, "nvml_charged_mb": charged,
            "rss_delta_mb": None if rss_before is None or rss_after is None
            else rss_after - rss_before,
            "gpu_delta_mb": None if gpu_before is None or gpu_after is None
            else gpu_after - gpu_before,
            "device_used_delta_mb": view["device_used_mb"] - device_before,
            "nvml_after": view}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument("--warm-up", action="store_true",
                        help="call the agent's warm-up with gpu_warm_up before the first model")
    args = parser.parse_args()
    result: dict[str, Any] = {"auto_probe": make_probe("auto").name}
    probe = NvmlProbe()
    result["nvml_available"] = probe.available()
    if not probe.available():
        print(json.dumps(result, indent=1))
        print("no NVML device here: nothing to measure")
        return 0
    import pynvml as nvml
    import torch

    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    name = nvml.nvmlDeviceGetName(handle)
    result.update(device=name if isinstance(name, str) else name.decode(),
                  driver=nvml.nvmlSystemGetDriverVersion(), torch=torch.__version__,
                  before=nvml_view(nvml))
    held: list[Any] = []

    def context() -> None:
        held.append(torch.zeros(1, device="cuda"))
        torch.cuda.synchronize()

    def cnn() -> None:  # a model of about 100 MB of float32 weights, loaded and run once
        net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(64, 128, 3, padding=1), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(8), torch.nn.Flatten(),
            torch.nn.Linear(128 * 64, 3000), torch.nn.ReLU(), torch.nn.Linear(3000, 10),
        ).to("cuda").eval()
        with torch.no_grad():
            net(torch.rand(1, 3, 224, 224, device="cuda"))
        torch.cuda.synchronize()
        held.append(net)

    def tensor_1g() -> None:
        held.append(torch.empty(1024 * 2**20, dtype=torch.uint8, device="cuda"))
        torch.cuda.synchronize()

    params_mb = 0.0
    if args.warm_up:  # the agent's own warm-up (agent.adapters.python.warm_up) goes first
        from agent.adapters.python import warm_up

        steps = [step("warm_up = [gpu_warm_up] (the agent's warm-up)", 0.0,
                      lambda: warm_up([f"{__name__}:gpu_warm_up"], probe), probe, nvml)]
    else:
        steps = [step("CUDA context (first GPU call)", 0.0, context, probe, nvml)]
    steps.append(step("CNN loaded and run once", float("nan"), cnn, probe, nvml))
    params_mb = sum(p.numel() * p.element_size() for p in held[-1].parameters()) / MB
    steps[-1]["allocated_mb"] = params_mb
    steps.append(step("1 GiB tensor", 1024.0, tensor_1g, probe, nvml))

    def free_all() -> None:
        held.clear()
        torch.cuda.empty_cache()
        torch.cuda.synchronize()

    steps.append(step("all but the context freed (empty_cache)", -(params_mb + 1024.0),
                      free_all, probe, nvml))
    result["steps"] = steps

    # another process's GPU memory must not be charged to this one
    other = subprocess.Popen([sys.executable, "-c", HOLD_SCRIPT], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert other.stdout is not None and other.stdin is not None
    other.stdout.readline()
    time.sleep(0.5)
    own_before = probe.gpu_mb()
    view = nvml_view(nvml)
    result["other_process"] = {"held_mb": OTHER_PROCESS_MB, "other_pid": other.pid,
                               "own_gpu_mb_while_other_holds": own_before, "nvml": view}
    other.stdin.write("\n")
    other.stdin.flush()
    other.wait(timeout=30)

    text = json.dumps(result, indent=1, default=str)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    print("\n| step | allocated MB | nvml probe charged MB | of which GPU MB | RSS MB |"
          " device used MB |")
    print("| --- | --- | --- | --- | --- | --- |")
    for s in steps:
        print(f"| {s['step']} | {s['allocated_mb']:.1f} | {s['nvml_charged_mb']} |"
              f" {s['gpu_delta_mb']} | {s['rss_delta_mb']:.1f} |"
              f" {s['device_used_delta_mb']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
