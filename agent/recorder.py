"""`mlink-agent record`: run every configured model on a source and write a recording.

This is how a user with their own models gets training data for links: declare the models
(with their task specs) and the source in an agent config, record, then train a bundle with
`mlink-train links RECORDING --out BUNDLE` on a workstation.
"""

from __future__ import annotations

import itertools
import logging
from functools import partial
from pathlib import Path

import numpy as np

from agent.config import AgentConfig, ConfigError
from agent.costs import median_delay_ms, memory_delta_mb, warm_up_runtime
from agent.heap import configure_heap
from agent.models import ModelAdapter, make_model
from agent.sources import open_source
from links_tflite.recording import Recording
from links_tflite.tasks import TaskSpec

log = logging.getLogger(__name__)


def declared_tasks(config: AgentConfig) -> dict[str, TaskSpec]:
    missing = [(f"models.{i}.task", "required to record this model's outputs")
               for i, m in enumerate(config.models) if m.enabled and m.task is None]
    if missing:
        raise ConfigError(missing)
    return {m.id: m.task.spec() for m in config.enabled_models if m.task is not None}


def record(config: AgentConfig, frames: int, with_frames: bool = False) -> Recording:
    """All enabled models on the first `frames` frames of the source, with measured costs."""
    tasks = declared_tasks(config)
    models = {m.id: make_model(m) for m in config.enabled_models}
    seen = list(itertools.islice(open_source(config.source).frames(), frames))
    if not seen:
        raise RuntimeError(f"source {config.source.type!r} yielded no frame")
    warmup, runs = config.profiling.warmup_runs, config.profiling.delay_runs
    configure_heap()  # each model's memory measured on its own, not on the last one's
    warmed = warm_up_runtime([m.path for m in config.enabled_models
                              if m.adapter == "tflite" and m.path is not None])
    outputs: dict[str, np.ndarray] = {}
    costs: dict[str, dict[str, float | None]] = {}
    for model_id, model in models.items():
        first = seen[0].modalities[model.input_modality]
        memory = memory_delta_mb(partial(_load_and_infer, model, first))
        delay = median_delay_ms(partial(model.infer, first), warmup, runs)
        costs[model_id] = {"memory_mb": memory, "delay_ms": delay}
        outputs[model_id] = np.stack(
            [model.infer(f.modalities[model.input_modality]) for f in seen]
        ).reshape(len(seen), tasks[model_id].output_width)
        model.unload()
        log.info("recorded %s on %d frames", model_id, len(seen))
    del warmed
    truth_models = [m for m in models if all(m in f.ground_truth for f in seen)]
    return Recording(
        workload=config.source.type,
        frame_ids=np.asarray([f.frame_id for f in seen], dtype=np.int64),
        ts=np.asarray([f.ts for f in seen], dtype=np.float64),
        tasks=tasks,
        outputs=outputs,
        inputs=({name: np.stack([f.modalities[name] for f in seen])
                 for name in {m.input_modality for m in models.values()}}
                if with_frames else {}),
        ground_truth={m: np.stack([f.ground_truth[m] for f in seen]).reshape(len(seen), -1)
                      for m in truth_models},
        costs=costs,
        camera_ids=np.asarray([f.camera for f in seen], dtype=np.int64),
    )


def record_to_file(config: AgentConfig, frames: int, out: Path, with_frames: bool) -> Recording:
    recording = record(config, frames, with_frames)
    recording.save(out)
    return recording


def _load_and_infer(model: ModelAdapter, example: np.ndarray) -> np.ndarray:
    model.load()
    return model.infer(example)
