"""Frame filtering in the spirit of Reducto (Li et al., SIGCOMM 2020): a frame is processed
only when a cheap low-level feature — here the mean absolute pixel difference to the last
*processed* frame of the same camera — exceeds a threshold; otherwise every output of the
last processed frame is reused. The threshold is calibrated on a stretch of the stream so
that the share of processed frames meets a target, as Reducto tunes its thresholds offline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agent.sources.base import Frame


def pixel_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Reducto's cheapest feature: mean absolute difference of the raw pixels."""
    return float(np.mean(np.abs(a.astype(np.float32) - b.astype(np.float32))))


@dataclass
class FrameFilter:
    """Decides per frame whether to process it; keeps the last processed frame per camera."""

    threshold: float
    modality: str = "image"

    def __post_init__(self) -> None:
        self._last: dict[int, np.ndarray] = {}

    def reset(self) -> None:
        self._last.clear()

    def should_process(self, frame: Frame) -> bool:
        pixels = frame.modalities[self.modality]
        last = self._last.get(frame.camera)
        if last is not None and pixel_difference(pixels, last) <= self.threshold:
            return False
        self._last[frame.camera] = pixels
        return True


def processed_share(frames: Sequence[Frame], threshold: float, modality: str = "image") -> float:
    """The share of frames a filter with this threshold processes."""
    frame_filter = FrameFilter(threshold, modality)
    return sum(frame_filter.should_process(f) for f in frames) / max(1, len(frames))


def consecutive_differences(frames: Sequence[Frame], modality: str = "image") -> list[float]:
    """Each frame's difference to the previous frame of the same camera."""
    last: dict[int, np.ndarray] = {}
    diffs = []
    for frame in frames:
        pixels = frame.modalities[modality]
        if frame.camera in last:
            diffs.append(pixel_difference(pixels, last[frame.camera]))
        last[frame.camera] = pixels
    return diffs


def calibrate_threshold(frames: Sequence[Frame], target_share: float,
                        modality: str = "image") -> float:
    """The smallest threshold whose processed share on these frames is <= target_share (the
    least skipping that meets the budget). Candidates are the consecutive differences seen,
    searched by bisection: the processed share falls as the threshold rises."""
    if target_share >= 1.0:
        return -1.0  # process every frame
    diffs = sorted(set(consecutive_differences(frames, modality)) | {0.0})
    low, high = 0, len(diffs) - 1
    if processed_share(frames, diffs[high], modality) > target_share:
        return float(diffs[high]) * 2.0 + 1.0  # only each camera's first frame
    while low < high:
        middle = (low + high) // 2
        if processed_share(frames, diffs[middle], modality) <= target_share:
            high = middle
        else:
            low = middle + 1
    return float(diffs[low])
