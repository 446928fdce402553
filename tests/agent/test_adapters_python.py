"""The Python adapter's warm-up (`warm_up` in the config): what a model runtime allocates once
per process (on a GPU: the CUDA context, cuDNN, cuBLAS) is charged to no model, where without
it the first model measured carries it all (benchmarks/results/gpu-memory.md measured this on
an H200: 725 MB on the first GPU model). Here a Python "runtime" allocates its one-off memory
on first use, as CUDA does."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest

from agent.adapters.python import PythonModel, WarmUpError, warm_up
from agent.config import ConfigError, load_config
from agent.control.patching import apply_patch
from agent.costs import MB, RssProbe, memory_delta_mb
from agent.errors import RequestError

RUNTIME_MB = 48.0  # the runtime's one-off allocation, held for the process's life
WEIGHTS_MB = 8.0  # the model's own
_RUNTIME: list[np.ndarray] = []
HERE = "tests.agent.test_adapters_python"


def runtime_once() -> None:
    """Like a CUDA context: made on first use, never freed."""
    if not _RUNTIME:
        _RUNTIME.append(np.ones(int(RUNTIME_MB * MB / 8)))


def broken() -> None:
    raise SystemExit(4)


class GpuLikeModel:
    def __init__(self) -> None:
        runtime_once()
        self.weights = np.ones(int(WEIGHTS_MB * MB / 8))

    def __call__(self, example: np.ndarray) -> np.ndarray:
        return np.zeros(3, dtype=np.float32)


def charged(model: PythonModel) -> float:
    mb = memory_delta_mb(lambda: (model.load(), model.infer(np.zeros(4))), RssProbe())
    model.unload()
    assert mb is not None
    return mb


def model() -> PythonModel:
    return PythonModel(cast(Any, SimpleNamespace(id="gpu", entry=f"{HERE}:GpuLikeModel")))


def test_first_model_carries_the_runtime_without_warm_up() -> None:
    _RUNTIME.clear()
    assert charged(model()) >= RUNTIME_MB * 0.9
    _RUNTIME.clear()


def test_warm_up_takes_the_runtime_off_the_first_model() -> None:
    _RUNTIME.clear()
    held, grown = warm_up([f"{HERE}:runtime_once"], RssProbe())
    assert held == [None]
    assert grown is not None and grown >= RUNTIME_MB * 0.9
    mb = charged(model())
    assert WEIGHTS_MB * 0.8 <= mb < WEIGHTS_MB + RUNTIME_MB / 2
    _RUNTIME.clear()


def test_failed_warm_up_names_the_entry() -> None:
    with pytest.raises(WarmUpError, match=r"warm_up\.1: .*broken failed: SystemExit"):
        warm_up([f"{HERE}:runtime_once", f"{HERE}:broken"], RssProbe())
    assert warm_up([], RssProbe()) == ([], 0.0)
    _RUNTIME.clear()


def write(tmp_path: Path, warm: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f'device_id = "t"\n{warm}\n[bundle]\npath = "b"\n'
                    f'[source]\ntype = "replay"\npath = "s.npz"\n[[models]]\nid = "m"\n'
                    f'adapter = "python"\nentry = "{HERE}:GpuLikeModel"\ninput = "image"\n')
    return path


def test_warm_up_is_local_only_and_bounded(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, f'warm_up = ["{HERE}:runtime_once"]'))
    assert config.warm_up == [f"{HERE}:runtime_once"]
    with pytest.raises(ConfigError, match=r"warm_up\.0"):
        load_config(write(tmp_path, 'warm_up = ["os.system"]'))
    many = ", ".join([f'"{HERE}:runtime_once"'] * 9)
    with pytest.raises(ConfigError, match="warm_up"):
        load_config(write(tmp_path, f"warm_up = [{many}]"))
    with pytest.raises(RequestError) as refused:  # a remote request names no code
        apply_patch(config, {"warm_up": ["os:getcwd"]})
    assert refused.value.errors[0][0] == "warm_up"


def test_the_agent_warms_up_before_measuring(digits_fixture, models, tmp_path: Path) -> None:
    from agent.scheduler import Agent
    from tests.agent.test_scheduler_failures import python_config

    path = python_config(tmp_path, digits_fixture.root)
    path.write_text(f'warm_up = ["{HERE}:runtime_once"]\n' + path.read_text())
    _RUNTIME.clear()
    agent = Agent.from_config(load_config(path))
    agent.start()
    figures = agent.cost_figures()
    assert figures["warm_up_mb"] is not None and figures["warm_up_mb"] >= RUNTIME_MB * 0.9
    assert all(c.memory_mb < RUNTIME_MB / 2 for c in agent.model_costs.values())
    agent.close()
    _RUNTIME.clear()
