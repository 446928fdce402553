"""The workload interface: frames with ground truth, split three ways, and model recipes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from agent.registry import Registry
from links_tflite.tasks import TaskSpec


@dataclass(frozen=True)
class WorkloadData:
    """Frames in stream order with the ground truth of every model's task."""

    frame_ids: np.ndarray
    ts: np.ndarray
    inputs: dict[str, np.ndarray]
    ground_truth: dict[str, np.ndarray]
    camera_ids: np.ndarray | None = None

    def rows(self, rows: np.ndarray) -> WorkloadData:
        return WorkloadData(
            frame_ids=self.frame_ids[rows],
            ts=self.ts[rows],
            inputs={k: v[rows] for k, v in self.inputs.items()},
            ground_truth={k: v[rows] for k, v in self.ground_truth.items()},
            camera_ids=None if self.camera_ids is None else self.camera_ids[rows],
        )

    def __len__(self) -> int:
        return int(self.frame_ids.shape[0])


@dataclass(frozen=True)
class ModelRecipe:
    """How to build and train one black-box model of the zoo."""

    model_id: str
    task: TaskSpec
    input_modality: str
    build: Callable[[tuple[int, ...]], Any]  # input shape -> compiled keras.Model
    epochs: int
    description: str


@dataclass(frozen=True)
class Splits:
    """zoo: trains the black-box models; recording: trains and profiles links; stream: the
    frames the agent sees. Disjoint, so no figure is measured on data it was fitted to."""

    zoo: WorkloadData
    recording: WorkloadData
    stream: WorkloadData


class Workload:
    name: ClassVar[str]

    def load(self, seed: int) -> Splits:
        raise NotImplementedError

    def source_config(self, seed: int) -> dict[str, object]:
        """The agent's `[source]` table for this workload's stream (paths relative to the
        zoo directory). By default a replay of the zoo's `stream.npz`."""
        return {"type": "replay", "path": "stream.npz"}

    def recipes(self) -> list[ModelRecipe]:
        raise NotImplementedError


# One file per workload in this package, registered here under its `name` (agent.registry).
WORKLOADS: Registry[type[Workload]] = Registry("workload", key="name",
                                               package="offline_trainer.workloads")
