"""Agreement: how far a predicted output matches the model's own exact output, in [0, 1].

One function per task kind, each returning a per-frame score so that callers can average
over frames, models or subsets as they need. The paper calls this "accuracy"; we judge
against the model's exact output, never ground truth.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from links_tflite.tasks import TaskSpec

PAD_TOKEN = 0  # sequence outputs are token ids right-padded with 0


def _as_batch(values: np.ndarray, width: int) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1) if arr.shape[0] == width else arr.reshape(-1, 1)
    return arr.reshape(arr.shape[0], -1)


def single_label(pred: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """1 where the predicted class (argmax) equals the model's class."""
    return (np.argmax(pred, axis=-1) == np.argmax(exact, axis=-1)).astype(np.float64)


def multi_label(pred: np.ndarray, exact: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Share of labels on which both sides take the same side of the threshold."""
    return np.mean((pred >= threshold) == (exact >= threshold), axis=-1).astype(np.float64)


def box_area(boxes: np.ndarray) -> np.ndarray:
    width = np.clip(boxes[..., 2] - boxes[..., 0], 0.0, None)
    height = np.clip(boxes[..., 3] - boxes[..., 1], 0.0, None)
    return width * height


def iou(pred: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """IoU of (x0, y0, x1, y1) boxes. A box with no area is empty; empty vs empty is 1."""
    pred = np.asarray(pred, dtype=np.float64).reshape(-1, 4)
    exact = np.asarray(exact, dtype=np.float64).reshape(-1, 4)
    inter_lo = np.maximum(pred[:, :2], exact[:, :2])
    inter_hi = np.minimum(pred[:, 2:], exact[:, 2:])
    inter = np.prod(np.clip(inter_hi - inter_lo, 0.0, None), axis=1)
    area_p, area_e = box_area(pred), box_area(exact)
    union = area_p + area_e - inter
    both_empty = (area_p <= 0) & (area_e <= 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return np.where(both_empty, 1.0, score)


def within_tolerance(pred: np.ndarray, exact: np.ndarray, tolerance: float) -> np.ndarray:
    """1 where |pred - exact| <= tolerance; several outputs per frame are averaged."""
    return np.mean(np.abs(pred - exact) <= tolerance + 1e-9, axis=-1).astype(np.float64)


def all_within_tolerance(pred: np.ndarray, exact: np.ndarray, tolerance: float) -> np.ndarray:
    """1 where every output of the frame is within `tolerance` of the model's, else 0."""
    return np.all(np.abs(pred - exact) <= tolerance + 1e-9, axis=-1).astype(np.float64)


def strip_padding(tokens: np.ndarray) -> list[int]:
    """Token ids up to the first pad."""
    out: list[int] = []
    for token in np.asarray(tokens).reshape(-1).tolist():
        if int(token) == PAD_TOKEN:
            break
        out.append(int(token))
    return out


def edit_distance(a: list[int], b: list[int]) -> int:
    previous = list(range(len(b) + 1))
    for i, token_a in enumerate(a, start=1):
        current = [i]
        for j, token_b in enumerate(b, start=1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (token_a != token_b))
            )
        previous = current
    return previous[-1]


def sequence(pred: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """1 - token error rate against the exact sequence, clipped to [0, 1]."""
    scores = []
    for row_pred, row_exact in zip(pred, exact, strict=True):
        hyp, ref = strip_padding(row_pred), strip_padding(row_exact)
        if not ref:
            scores.append(1.0 if not hyp else 0.0)
            continue
        scores.append(max(0.0, 1.0 - edit_distance(hyp, ref) / len(ref)))
    return np.asarray(scores, dtype=np.float64)


def agreement(spec: TaskSpec, pred: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Per-frame agreement of `pred` with `exact` under the spec's measure."""
    pred_b = _as_batch(pred, spec.output_width)
    exact_b = _as_batch(exact, spec.output_width)
    if pred_b.shape != exact_b.shape:
        raise ValueError(f"agreement: shapes differ, pred {pred_b.shape} vs exact {exact_b.shape}")
    scorers: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
        "single_label": single_label,
        "multi_label": multi_label,
        "localization": iou,
        "regression": lambda p, e: (
            all_within_tolerance if spec.measure == "all_within_tolerance"
            else within_tolerance)(p, e, spec.tolerance),
        "sequence": sequence,
    }
    return scorers[spec.kind](pred_b, exact_b)


def mean_agreement(spec: TaskSpec, pred: np.ndarray, exact: np.ndarray) -> float:
    scores = agreement(spec, pred, exact)
    return float(scores.mean()) if scores.size else float("nan")


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the precision-recall curve of one label (no interpolation)."""
    order = np.argsort(-scores, kind="stable")
    hits = positives[order].astype(np.float64)
    if hits.sum() == 0:
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(np.sum(precision * hits) / hits.sum())


def side_figures(spec: TaskSpec, pred: np.ndarray, exact: np.ndarray) -> dict[str, float]:
    """The figures DESIGN reports beside agreement: mAP, MAE or exact match."""
    pred_b = _as_batch(pred, spec.output_width)
    exact_b = _as_batch(exact, spec.output_width)
    if spec.kind == "multi_label":
        aps = [average_precision(pred_b[:, i], exact_b[:, i] >= 0.5) for i in range(spec.dim)]
        valid = [ap for ap in aps if not np.isnan(ap)]
        return {"mAP": float(np.mean(valid)) if valid else float("nan")}
    if spec.kind == "regression":
        return {"MAE": float(np.mean(np.abs(pred_b - exact_b)))}
    if spec.kind == "sequence":
        same = [strip_padding(p) == strip_padding(e) for p, e in zip(pred_b, exact_b, strict=True)]
        return {"exact_match": float(np.mean(same)) if same else float("nan")}
    return {}
