"""The agent and the frames an evaluation runs on: the zoo's stream (`stream.npz`, never used
to train models or links), replayed in order, with every model's exact output and the truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent.config import AgentConfig, read_config_file, validate
from agent.sources.base import Frame
from agent.sources.replay import ReplaySource
from links_tflite.agreement import mean_agreement
from links_tflite.recording import Recording
from links_tflite.tasks import TaskSpec


@dataclass
class Stream:
    """The stream's frames split into calibration and test, with exact outputs and truth."""

    calibration: list[Frame]
    test: list[Frame]
    exact: dict[str, np.ndarray]  # model -> rows aligned with `test`
    truth: dict[str, np.ndarray]
    calibration_exact: dict[str, np.ndarray] = field(default_factory=dict)
    calibration_truth: dict[str, np.ndarray] = field(default_factory=dict)


def evaluation_config(zoo: Path, bundle: Path, models: tuple[str, ...]) -> AgentConfig:
    """The zoo's own agent config (as `mlink-train zoo` writes it for users), replaying the
    stream, with these models and bundle, and no periodic re-profiling: the methods are
    compared on fixed selections."""
    data = read_config_file(zoo / "agent.toml")
    data["bundle"] = {"path": str(bundle.resolve())}
    data["source"] = {"type": "replay", "path": str((zoo / "stream.npz").resolve())}
    data["models"] = [m for m in data["models"] if m["id"] in models]
    data["profiling"] = {**data.get("profiling", {}), "period_frames": 0, "period_s": 0.0}
    data.pop("budget", None)
    return validate(data, zoo.resolve(), str(zoo / "agent.toml"))


def load_stream(config: AgentConfig, models: tuple[str, ...], frames: int,
                calibration_share: float) -> Stream:
    """The first `calibration_share` of the frames tune the filters; the rest are the test."""
    recording = Recording.load(config.source.path)
    n = len(recording) if frames <= 0 else min(frames, len(recording))
    source = ReplaySource(config.source)
    stream: list[Frame] = [frame for _, frame in zip(range(n), source.frames(), strict=False)]
    cut = max(1, round(n * calibration_share))
    exact = {m: recording.outputs[m][:n] for m in models}
    truth = {m: recording.ground_truth[m][:n] for m in models}
    return Stream(
        calibration=stream[:cut], test=stream[cut:],
        exact={m: v[cut:] for m, v in exact.items()},
        truth={m: v[cut:] for m, v in truth.items()},
        calibration_exact={m: v[:cut] for m, v in exact.items()},
        calibration_truth={m: v[:cut] for m, v in truth.items()},
    )


def reuse_agreement(stream: Stream, specs: dict[str, TaskSpec]) -> float:
    """How redundant the test stream is in time: the mean agreement, over models and frames,
    of the previous frame's exact output (same camera) with the frame's own. Near 1 a frame
    filter loses little; for independent frames it is chance."""
    last: dict[int, int] = {}
    pairs: list[tuple[int, int]] = []
    for row, frame in enumerate(stream.test):
        if frame.camera in last:
            pairs.append((last[frame.camera], row))
        last[frame.camera] = row
    if not pairs:
        return 0.0
    before, after = (np.array(side) for side in zip(*pairs, strict=True))
    return float(np.mean([mean_agreement(specs[m], v[before], v[after])
                          for m, v in stream.exact.items()]))
