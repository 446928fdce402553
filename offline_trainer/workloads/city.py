"""`city`: the procedural intersection-camera stream of `agent.sources.city` and five models,
as in the paper's City Traffic system: person counting, traffic condition, vehicle counting,
plus the largest vehicle's box and a short scene caption.

Splits: the zoo and the recording are disjoint random samples over both days and all cameras
(so models and links see every hour, site and weather); the stream is a contiguous stretch of
the weekday's morning rush, every camera, one frame per second each.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from agent.sources.city import (
    CAPTION_LEN,
    CAPTION_VOCAB,
    TRAFFIC,
    CityGenerator,
    start_index,
)
from links_tflite.tasks import TaskSpec
from offline_trainer.workloads.base import (
    WORKLOADS,
    ModelRecipe,
    Splits,
    Workload,
    WorkloadData,
)
from offline_trainer.workloads.builders import cnn

CAMERAS = 4
ZOO_FRAMES = 6000
RECORDING_FRAMES = 3000
STREAM_FRAMES = 1200
STREAM_START = (0, 7.75)  # weekday, 07:45
# `edge`: every model a 3-stage CNN of 5.7 M parameters and 159 M multiply-adds a frame (as
# MobileNetV2 0.75 at 160x160; 4 ms on one x86 core), a small real edge model's compute, for
# benchmarks whose ratios depend on the models' own cost
# (the agent's overhead). Trained on fewer frames and epochs to keep the build to minutes.
MODEL_SIZES = ("small", "edge")
EDGE_BACKBONE = ([128, 256, 512], 512)
EDGE_ZOO_FRAMES = 2400
EDGE_EPOCHS = 3


def tasks() -> dict[str, TaskSpec]:
    return {
        "persons": TaskSpec("regression", 1),
        "traffic": TaskSpec("single_label", 3, labels=TRAFFIC),
        "vehicles": TaskSpec("regression", 1),
        "vehicle_box": TaskSpec("localization", 4),
        "caption": TaskSpec("sequence", 0, vocab_size=len(CAPTION_VOCAB), labels=CAPTION_VOCAB,
                            max_len=CAPTION_LEN),
    }


@WORKLOADS.register
class CityWorkload(Workload):
    name: ClassVar[str] = "city"

    def __init__(self, zoo_frames: int | None = None, recording_frames: int = RECORDING_FRAMES,
                 stream_frames: int = STREAM_FRAMES, model_size: str = "small") -> None:
        if model_size not in MODEL_SIZES:
            raise ValueError(f"city model size {model_size!r}: expected one of {MODEL_SIZES}")
        if zoo_frames is None:
            zoo_frames = EDGE_ZOO_FRAMES if model_size == "edge" else ZOO_FRAMES
        self.sizes = (zoo_frames, recording_frames, stream_frames)
        self.model_size = model_size

    def source_config(self, seed: int) -> dict[str, object]:
        day, hour = STREAM_START
        return {"type": "city", "seed": seed, "cameras": CAMERAS, "start_day": day,
                "start_hour": hour}

    def data(self, generator: CityGenerator, indices: np.ndarray) -> WorkloadData:
        images, truth, ts, cameras = generator.batch(indices)
        return WorkloadData(frame_ids=indices.astype(np.int64), ts=ts, inputs={"image": images},
                            ground_truth=truth, camera_ids=cameras)

    def load(self, seed: int) -> Splits:
        generator = CityGenerator(seed, CAMERAS)
        zoo_n, recording_n, stream_n = self.sizes
        start = start_index(*STREAM_START, CAMERAS)
        stream = np.arange(start, start + stream_n)
        pool = np.setdiff1d(np.arange(len(generator)), stream)
        sample = np.random.default_rng(seed).choice(pool, zoo_n + recording_n, replace=False)
        return Splits(
            zoo=self.data(generator, np.sort(sample[:zoo_n])),
            recording=self.data(generator, np.sort(sample[zoo_n:])),
            stream=self.data(generator, stream),
        )

    def recipes(self) -> list[ModelRecipe]:
        spec = tasks()

        def recipe(model_id: str, filters: list[int], dense: int, epochs: int,
                   text: str) -> ModelRecipe:
            task = spec[model_id]
            if self.model_size == "edge":
                (filters, dense), epochs = EDGE_BACKBONE, EDGE_EPOCHS
                text = f"edge-size CNN 128-256-512 + 512: {text.partition(': ')[2]}"
            return ModelRecipe(model_id, task, "image",
                               lambda shape: cnn(shape, filters, dense, task), epochs, text)

        return [
            recipe("persons", [32, 64], 128, 15, "CNN 32-64 + 128: counts pedestrians"),
            recipe("traffic", [8], 16, 20, "CNN 8 + 16: free / busy / jammed"),
            recipe("vehicles", [16, 32], 64, 20, "CNN 16-32 + 64: counts vehicles"),
            recipe("vehicle_box", [16, 32], 64, 30,
                   "CNN 16-32 + 64 -> (1+4): is there a vehicle, the largest one's box"),
            recipe("caption", [16, 16], 64, 10, "CNN 16-16 + 64: time, weather, crowd words"),
        ]
