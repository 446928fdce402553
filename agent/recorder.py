"""`mlink-agent record`: run every configured model on a source and write a recording.

This is how a user with their own models gets training data for links: declare the models
(with their task specs) and the source in an agent config, record, then train a bundle with
`mlink-train links RECORDING --out BUNDLE` on a workstation.

Any source will do: a video file or stream, cameras (`[[sources]]`: each frame keeps its
camera), text lines or JSON records. `inputs_only` records the frames and runs no model (a
recording of inputs, to replay as a source later); `with_frames` keeps the frames beside the
outputs. Text is stored as unicode strings, a JSON record as its JSON text.
"""

from __future__ import annotations

import itertools
import json
import logging
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from agent.adapters.python import warm_up
from agent.config import AgentConfig, ConfigError
from agent.costs import make_probe, median_delay_ms, memory_delta_mb, warm_up_runtime
from agent.heap import configure_heap
from agent.models import ModelAdapter, make_model
from agent.sources import Frame, open_sources
from links_tflite.recording import Recording
from links_tflite.tasks import TaskSpec

log = logging.getLogger(__name__)


def declared_tasks(config: AgentConfig) -> dict[str, TaskSpec]:
    missing = [(f"models.{i}.task", "required to record this model's outputs")
               for i, m in enumerate(config.models) if m.enabled and m.task is None]
    if missing:
        raise ConfigError(missing)
    return {m.id: m.task.spec() for m in config.enabled_models if m.task is not None}


def input_array(values: list[Any]) -> np.ndarray:
    """One modality over the frames as an array a recording can hold without pickling: arrays
    stacked, text as unicode strings, JSON records as their JSON text."""
    if all(isinstance(v, str) for v in values):
        return np.asarray(values, dtype=str)
    if all(isinstance(v, dict) for v in values):
        return np.asarray([json.dumps(v, ensure_ascii=False) for v in values], dtype=str)
    return np.stack([np.asarray(v) for v in values])


def read_frames(config: AgentConfig, frames: int
                ) -> tuple[list[Frame], tuple[str, ...], tuple[str, ...]]:
    """The first `frames` frames of the configured source(s), the camera names and the
    modalities every frame carries."""
    source = open_sources(config)
    try:
        seen = list(itertools.islice(source.frames(), frames))
    finally:
        source.close()
    if not seen:
        raise RuntimeError(f"source {config.source_type!r} yielded no frame")
    return seen, source.cameras, source.modalities


def record(config: AgentConfig, frames: int, with_frames: bool = False,
           inputs_only: bool = False) -> Recording:
    """All enabled models on the first `frames` frames of the source, with measured costs;
    with `inputs_only`, the frames alone."""
    if inputs_only:
        seen, cameras, modalities = read_frames(config, frames)
        return _recording(config, seen, cameras, {}, {}, {},
                          {name: input_array([f.modalities[name] for f in seen])
                           for name in modalities})
    tasks = declared_tasks(config)
    models = {m.id: make_model(m) for m in config.enabled_models}
    seen, cameras, _ = read_frames(config, frames)
    warmup, runs = config.profiling.warmup_runs, config.profiling.delay_runs
    configure_heap()  # each model's memory measured on its own, not on the last one's
    probe = make_probe(config.profiling.memory_probe)  # GPU memory too, where NVML reads it
    warmed_up, _ = warm_up(config.warm_up, probe)
    warmed = warm_up_runtime([m.path for m in config.enabled_models
                              if m.adapter == "tflite" and m.path is not None])
    outputs: dict[str, np.ndarray] = {}
    costs: dict[str, dict[str, float | None]] = {}
    for model_id, model in models.items():
        first = seen[0].modalities[model.input_modality]
        memory = memory_delta_mb(partial(_load_and_infer, model, first), probe)
        delay = median_delay_ms(partial(model.infer, first), warmup, runs)
        costs[model_id] = {"memory_mb": memory, "delay_ms": delay}
        outputs[model_id] = np.stack(
            [model.infer(f.modalities[model.input_modality]) for f in seen]
        ).reshape(len(seen), tasks[model_id].output_width)
        model.unload()
        log.info("recorded %s on %d frames", model_id, len(seen))
    del warmed, warmed_up
    inputs = ({name: input_array([f.modalities[name] for f in seen])
               for name in sorted({m.input_modality for m in models.values()})}
              if with_frames else {})
    return _recording(config, seen, cameras, tasks, outputs, costs, inputs)


def _recording(config: AgentConfig, seen: list[Frame], cameras: tuple[str, ...],
               tasks: dict[str, TaskSpec], outputs: dict[str, np.ndarray],
               costs: dict[str, dict[str, float | None]], inputs: dict[str, np.ndarray]
               ) -> Recording:
    truth_models = [m for m in tasks if all(m in f.ground_truth for f in seen)]
    return Recording(
        workload=config.source_type,
        frame_ids=np.asarray([f.frame_id for f in seen], dtype=np.int64),
        ts=np.asarray([f.ts for f in seen], dtype=np.float64),
        tasks=tasks,
        outputs=outputs,
        inputs=inputs,
        ground_truth={m: np.stack([f.ground_truth[m] for f in seen]).reshape(len(seen), -1)
                      for m in truth_models},
        costs=costs,
        camera_ids=np.asarray([f.camera for f in seen], dtype=np.int64),
        cameras=list(cameras),
        json_inputs=sorted(name for name in inputs
                           if all(isinstance(f.modalities[name], dict) for f in seen)),
    )


def record_to_file(config: AgentConfig, frames: int, out: Path, with_frames: bool,
                   inputs_only: bool = False) -> Recording:
    recording = record(config, frames, with_frames, inputs_only)
    recording.save(out)
    return recording


def _load_and_infer(model: ModelAdapter, example: Any) -> np.ndarray:
    model.load()
    return model.infer(example)
