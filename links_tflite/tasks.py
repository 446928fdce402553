"""Task specs: what a black-box model outputs, and how agreement with it is judged.

A spec is the contract between a model, the links that predict it and the agreement metric
that scores those predictions; the bundle stores one per model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

TaskKind = Literal["single_label", "multi_label", "localization", "regression", "sequence"]
TASK_KINDS: tuple[str, ...] = (
    "single_label",
    "multi_label",
    "localization",
    "regression",
    "sequence",
)

# The output activation each kind's model (and each link predicting it) ends with.
DEFAULT_ACTIVATION: dict[str, str] = {
    "single_label": "softmax",
    "multi_label": "sigmoid",
    "localization": "sigmoid",
    "regression": "linear",
    "sequence": "softmax",
}

# Agreement measures each kind accepts, its default first (see links_tflite.agreement):
# regression's `within_tolerance` credits each output within `tolerance` (a frame with two
# outputs, one off, scores 0.5); `all_within_tolerance` credits a frame only when every
# output is within it.
MEASURES: dict[str, tuple[str, ...]] = {
    "single_label": ("argmax_equal",),
    "multi_label": ("label_agreement",),
    "localization": ("iou",),
    "regression": ("within_tolerance", "all_within_tolerance"),
    "sequence": ("one_minus_token_error_rate",),
}
DEFAULT_MEASURE: dict[str, str] = {kind: names[0] for kind, names in MEASURES.items()}


class TaskSpecError(ValueError):
    """A task spec that cannot describe a model output."""


@dataclass(frozen=True)
class TaskSpec:
    """What one model outputs.

    `dim` is the width of one output vector: classes (single/multi label), 4 for a box
    (x0, y0, x1, y1 in [0, 1] image coordinates), 1 or more for regression. Sequences are
    token ids of at most `max_len` over a vocabulary of `vocab_size` tokens.
    """

    kind: TaskKind
    dim: int
    activation: str = ""
    measure: str = ""
    tolerance: float = 0.5
    vocab_size: int = 0
    max_len: int = 0
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise TaskSpecError(f"kind: {self.kind!r} is not one of {', '.join(TASK_KINDS)}")
        if not self.activation:
            object.__setattr__(self, "activation", DEFAULT_ACTIVATION[self.kind])
        if not self.measure:
            object.__setattr__(self, "measure", DEFAULT_MEASURE[self.kind])
        object.__setattr__(self, "labels", tuple(self.labels))
        self._check()

    def _check(self) -> None:
        if self.kind == "sequence":
            if self.vocab_size < 2 or self.max_len < 1:
                raise TaskSpecError("sequence: vocab_size >= 2 and max_len >= 1 are required")
        elif self.dim < 1:
            raise TaskSpecError(f"dim: must be >= 1, got {self.dim}")
        if self.kind == "localization" and self.dim != 4:
            raise TaskSpecError(f"dim: a localization box has 4 numbers, got {self.dim}")
        if self.kind == "single_label" and self.dim < 2:
            raise TaskSpecError(f"dim: single_label needs at least 2 classes, got {self.dim}")
        if self.measure not in MEASURES[self.kind]:
            raise TaskSpecError(f"measure: {self.measure!r} is not a {self.kind} measure; "
                                f"one of {', '.join(MEASURES[self.kind])}")
        if self.tolerance < 0:
            raise TaskSpecError(f"tolerance: must be >= 0, got {self.tolerance}")
        if self.labels and self.kind in ("single_label", "multi_label") and len(
            self.labels
        ) != self.dim:
            raise TaskSpecError(f"labels: {len(self.labels)} names for {self.dim} classes")

    @property
    def output_width(self) -> int:
        """Numbers in one frame's output as stored in a recording."""
        return self.max_len if self.kind == "sequence" else self.dim

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["labels"] = list(self.labels)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "task") -> TaskSpec:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise TaskSpecError(f"{where}: unknown keys {unknown}")
        try:
            return cls(**data)
        except TaskSpecError as exc:
            raise TaskSpecError(f"{where}.{exc}") from None
        except TypeError as exc:
            raise TaskSpecError(f"{where}: {exc}") from None


def parse_tasks(models: Any, where: str = "models") -> dict[str, TaskSpec]:
    """`{model_id: {"task": {...}}}` as stored in bundles and recordings -> task specs."""
    try:
        return {
            model_id: TaskSpec.from_dict(entry["task"], where=f"{where}.{model_id}.task")
            for model_id, entry in models.items()
        }
    except (KeyError, TypeError, AttributeError) as exc:
        raise TaskSpecError(f"{where}: malformed ({type(exc).__name__}: {exc})") from None


def activate(activation: str, logits: np.ndarray) -> np.ndarray:
    """Apply a task activation in float on the host (links are exported up to the logits)."""
    z = np.asarray(logits, dtype=np.float32)
    if activation == "softmax":
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if activation == "linear":
        return z
    raise ValueError(f"unknown activation {activation!r}")


def link_width(spec: TaskSpec) -> int:
    """How many logits a link into this target outputs: a localization link says first
    whether there is something to box, then the box (as the zoo's localization models do)."""
    return spec.dim + 1 if spec.kind == "localization" else spec.dim


def gate_box(values: np.ndarray) -> np.ndarray:
    """(presence, box) probabilities -> the box, or the empty box where presence < 0.5."""
    values = np.asarray(values, dtype=np.float32)
    return values[..., 1:] * (values[..., :1] >= 0.5)


def link_output(spec: TaskSpec, logits: np.ndarray) -> np.ndarray:
    """A vector link's exported logits as the target model's output: the task activation in
    float on the host, then for a localization link's (presence, box) the gate. Links of
    older bundles (4 box logits) are only activated."""
    values = activate(spec.activation, logits)
    if spec.kind == "localization" and values.shape[-1] == spec.dim + 1:
        return gate_box(values)
    return values


def decode(spec: TaskSpec, output: np.ndarray | list[float]) -> dict[str, Any]:
    """A subscriber-friendly reading of one output (an array, or its numbers as a flat
    list): the label, labels, box or numbers."""
    values = output if isinstance(output, list) else (
        np.asarray(output, dtype=np.float64).reshape(-1).tolist())
    if spec.kind == "single_label":
        index = max(range(len(values)), key=values.__getitem__)
        decoded: dict[str, Any] = {"label": index}
        if spec.labels:
            decoded["name"] = spec.labels[index]
        return decoded
    if spec.kind == "multi_label":
        on = [i for i, v in enumerate(values) if v >= 0.5]
        return {"labels": on, **({"names": [spec.labels[i] for i in on]} if spec.labels else {})}
    if spec.kind == "localization":
        return {"box": values[:4]}
    if spec.kind == "regression":
        return {"value": values}
    tokens = [round(v) for v in values]
    return {"tokens": tokens[: tokens.index(0)] if 0 in tokens else tokens}
