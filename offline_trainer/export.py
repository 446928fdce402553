"""Keras -> TFLite: float files for the black-box models, int8 for links.

Every int8 file is checked after conversion: a file whose compute ops still take float
operands is not int8, whatever the converter said. A link that cannot be made int8 falls
back to dynamic-range, then float16, and the manifest records which it got.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from links_tflite.interpreter import TFLiteRunner, float_compute_ops

log = logging.getLogger(__name__)

QUANTIZATIONS = ("int8", "dynamic_range", "float16")


@dataclass(frozen=True)
class Exported:
    path: Path
    quantization: str
    ops: tuple[str, ...]
    size_bytes: int


def _quiet_tensorflow() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


def _converter(model: Any, quantization: str, representative: np.ndarray | None) -> Any:
    tf = _quiet_tensorflow()
    warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantization == "float32":
        return converter
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "int8":
        if representative is None or len(representative) == 0:
            raise ValueError("int8 quantization needs a representative set")

        def samples() -> Iterator[list[np.ndarray]]:
            for row in representative:
                yield [row[None, ...].astype(np.float32)]

        converter.representative_dataset = samples
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.float32
        converter.inference_output_type = tf.float32
    elif quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    return converter


def convert(model: Any, path: Path, quantization: str,
            representative: np.ndarray | None = None) -> Exported:
    """Convert one Keras model to one .tflite file at `path` and check what came out."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(io.StringIO()):  # Keras prints the exported signature
        flatbuffer = _converter(model, quantization, representative).convert()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(flatbuffer)
    runner = TFLiteRunner(tmp)
    if quantization == "int8":
        leftover = float_compute_ops(runner)
        if leftover:
            tmp.unlink()
            raise ValueError(f"int8 conversion left float compute ops: {leftover}")
    ops = tuple(runner.op_types())
    del runner
    tmp.replace(path)
    return Exported(path=path, quantization=quantization, ops=ops, size_bytes=len(flatbuffer))


def convert_link(model: Any, path: Path, representative: np.ndarray,
                 order: tuple[str, ...] = QUANTIZATIONS,
                 converter: Callable[..., Exported] = convert) -> Exported:
    """int8 first; on failure the next quantization in `order`, for this link only."""
    failures = []
    for quantization in order:
        try:
            return converter(model, path, quantization, representative)
        except Exception as exc:  # the converter raises many kinds
            log.warning("%s: %s conversion failed: %s", path.name, quantization, exc)
            failures.append(f"{quantization}: {exc}")
    raise RuntimeError(f"{path.name}: no quantization worked ({'; '.join(failures)})")
