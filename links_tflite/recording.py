"""Recordings: the aligned outputs of all models on the same frames.

One `.npz` file (numpy's zip of arrays, read with allow_pickle=False), keys:

- `__meta__`: uint8 bytes of a JSON object: `format`, `format_version`, `workload`,
  `models` ({model_id: {"task": TaskSpec}}), `modalities` (names), `costs` (optional,
  {model_id: {...}}), `notes`.
- `frame_ids` int64 (N,), `ts` float64 (N,) seconds since the epoch (or stream start).
- `camera_ids` int64 (N,) optional: which camera of a multi-camera stream saw the frame;
  `cameras` in the meta names them by index.
- `outputs/<model_id>` float32 (N, width): the model's exact output per frame; width is the
  task's `dim`, or `max_len` token ids (0-padded) for sequences.
- `inputs/<modality>` (N, ...) optional: the frames themselves, so a recording can be replayed
  as an input stream: arrays, text as unicode strings, JSON records (dicts) as their JSON text,
  named in the meta's `json_inputs` so that a replay hands them back as dicts.
- `ground_truth/<model_id>` optional, same shape as the outputs.

Row i of every array belongs to frame `frame_ids[i]`: that alignment is the whole point.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from links_tflite.tasks import TaskSpec, TaskSpecError, parse_tasks

FORMAT = "mlink-recording"
FORMAT_VERSION = 1


class RecordingError(ValueError):
    """A recording that cannot be trusted; the message names the array and the problem."""


@dataclass
class Recording:
    workload: str
    frame_ids: np.ndarray
    ts: np.ndarray
    tasks: dict[str, TaskSpec]
    outputs: dict[str, np.ndarray]
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    ground_truth: dict[str, np.ndarray] = field(default_factory=dict)
    costs: dict[str, dict[str, Any]] = field(default_factory=dict)
    camera_ids: np.ndarray | None = None
    cameras: list[str] = field(default_factory=list)
    json_inputs: list[str] = field(default_factory=list)  # inputs held as JSON text

    def input_value(self, modality: str, row: int) -> Any:
        """Frame `row`'s input `modality` as the models take it: an array, a `str`, or the
        `dict` of a JSON record."""
        value = self.inputs[modality][row]
        if modality in self.json_inputs:
            try:
                record = json.loads(str(value))
            except json.JSONDecodeError as exc:
                raise RecordingError(f"inputs/{modality}: row {row} is not JSON ({exc})"
                                     ) from None
            if not isinstance(record, dict):
                raise RecordingError(f"inputs/{modality}: row {row} is not a JSON object")
            return record
        return str(value) if isinstance(value, np.str_) else value

    def __len__(self) -> int:
        return int(self.frame_ids.shape[0])

    @property
    def models(self) -> list[str]:
        return list(self.tasks)

    def validate(self) -> None:
        n = len(self)
        if self.frame_ids.ndim != 1 or self.ts.shape != (n,):
            raise RecordingError(f"frame_ids/ts: expected ({n},), got {self.ts.shape}")
        if len(np.unique(self.frame_ids)) != n:
            raise RecordingError("frame_ids: duplicate frame ids, frames are misaligned")
        for model_id in self.tasks:
            if model_id not in self.outputs:
                raise RecordingError(f"outputs/{model_id}: missing (model listed in the meta)")
        for group_name, group in (("outputs", self.outputs), ("ground_truth", self.ground_truth)):
            for model_id, values in group.items():
                self._check_output(f"{group_name}/{model_id}", model_id, values)
        if self.camera_ids is not None and self.camera_ids.shape != (n,):
            raise RecordingError(f"camera_ids: expected ({n},), got {self.camera_ids.shape}")
        for name, values in self.inputs.items():
            if values.shape[0] != n:
                raise RecordingError(f"inputs/{name}: {values.shape[0]} rows for {n} frames")
        for name in self.json_inputs:
            if name not in self.inputs or self.inputs[name].dtype.kind != "U":
                raise RecordingError(f"json_inputs: {name!r} is not a text input "
                                     f"(inputs/{name} holds no JSON text)")

    def _check_output(self, key: str, model_id: str, values: np.ndarray) -> None:
        if model_id not in self.tasks:
            raise RecordingError(f"{key}: no task spec for model {model_id!r}")
        width = self.tasks[model_id].output_width
        if values.shape != (len(self), width):
            raise RecordingError(f"{key}: shape {values.shape}, expected ({len(self)}, {width})")
        if not np.all(np.isfinite(values)):
            bad = int(np.argmax(~np.isfinite(values).all(axis=1)))
            raise RecordingError(f"{key}: NaN or infinite value at row {bad}")

    def subset(self, rows: np.ndarray) -> Recording:
        """The same recording restricted to some rows (e.g. a train or held-out split)."""
        return Recording(
            workload=self.workload,
            frame_ids=self.frame_ids[rows],
            ts=self.ts[rows],
            tasks=dict(self.tasks),
            outputs={k: v[rows] for k, v in self.outputs.items()},
            inputs={k: v[rows] for k, v in self.inputs.items()},
            ground_truth={k: v[rows] for k, v in self.ground_truth.items()},
            costs=dict(self.costs),
            camera_ids=None if self.camera_ids is None else self.camera_ids[rows],
            cameras=list(self.cameras),
        )

    def select_models(self, models: list[str] | tuple[str, ...]) -> Recording:
        """The same frames with only some models (e.g. the ones a bundle links)."""
        missing = sorted(set(models) - set(self.tasks))
        if missing:
            raise RecordingError(f"models {missing} are not in the recording "
                                 f"(it has {self.models})")
        return dataclasses.replace(
            self,
            tasks={m: self.tasks[m] for m in models},
            outputs={m: self.outputs[m] for m in models},
            ground_truth={m: v for m, v in self.ground_truth.items() if m in models},
            costs={m: v for m, v in self.costs.items() if m in models},
        )

    def save(self, path: str | Path) -> Path:
        self.validate()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "workload": self.workload,
            "models": {m: {"task": spec.to_dict()} for m, spec in self.tasks.items()},
            "modalities": sorted(self.inputs),
            "costs": self.costs,
            "cameras": self.cameras,
            "json_inputs": self.json_inputs,
        }
        arrays: dict[str, np.ndarray] = {
            "__meta__": np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8),
            "frame_ids": self.frame_ids.astype(np.int64),
            "ts": self.ts.astype(np.float64),
        }
        if self.camera_ids is not None:
            arrays["camera_ids"] = self.camera_ids.astype(np.int64)
        arrays.update({f"outputs/{k}": v.astype(np.float32) for k, v in self.outputs.items()})
        arrays.update({f"inputs/{k}": v for k, v in self.inputs.items()})
        arrays.update(
            {f"ground_truth/{k}": v.astype(np.float32) for k, v in self.ground_truth.items()}
        )
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, **cast(dict[str, Any], arrays))  # arrays by name
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Recording:
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except FileNotFoundError:
            raise RecordingError(f"recording not found: {path}") from None
        except (OSError, ValueError) as exc:
            raise RecordingError(f"{path}: not a readable .npz recording ({exc})") from None
        meta = _parse_meta(path, arrays)
        try:
            tasks = parse_tasks(meta.get("models"))
        except TaskSpecError as exc:
            raise RecordingError(f"{path}: meta: {exc}") from None

        def group(prefix: str) -> dict[str, np.ndarray]:
            return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}

        for key in ("frame_ids", "ts"):
            if key not in arrays:
                raise RecordingError(f"{path}: missing array {key!r}")
        recording = cls(
            workload=str(meta.get("workload", "")),
            frame_ids=arrays["frame_ids"],
            ts=arrays["ts"],
            tasks=tasks,
            outputs=group("outputs/"),
            inputs=group("inputs/"),
            ground_truth=group("ground_truth/"),
            costs=meta.get("costs", {}) or {},
            camera_ids=arrays.get("camera_ids"),
            cameras=list(meta.get("cameras", []) or []),
            json_inputs=list(meta.get("json_inputs", []) or []),
        )
        try:
            recording.validate()
        except RecordingError as exc:
            raise RecordingError(f"{path}: {exc}") from None
        return recording


def _parse_meta(path: Path, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    if "__meta__" not in arrays:
        raise RecordingError(f"{path}: missing '__meta__' (not an MLink recording)")
    try:
        meta = json.loads(arrays["__meta__"].tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordingError(f"{path}: '__meta__' is not JSON ({exc})") from None
    if meta.get("format") != FORMAT:
        raise RecordingError(f"{path}: format {meta.get('format')!r} is not {FORMAT!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise RecordingError(f"{path}: format_version {meta.get('format_version')!r} unsupported")
    return meta
