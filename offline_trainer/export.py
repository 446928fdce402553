"""Keras -> TFLite: float files for the black-box models, int8 for links.

Every int8 file is checked after conversion: a file whose compute ops still take float
operands is not int8, whatever the converter said. A link that cannot be made int8 falls
back to dynamic-range, then float16, and the manifest records which it got.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from links_tflite.agreement import mean_agreement
from links_tflite.ensemble import open_link_files
from links_tflite.interpreter import float_compute_ops, open_runner
from links_tflite.tasks import TaskSpec
from offline_trainer.links import TrainedLink

log = logging.getLogger(__name__)

QUANTIZATIONS = ("int8", "dynamic_range", "float16")
# A sequence link's files must decode like its float original on this share of tokens.
SEQUENCE_FLOOR = 0.97
# ... unless, on rows it did not fit, it agrees with the target model within this of the float
# link (its differences from the float link are then near-ties, not lost agreement).
AGREEMENT_SLACK = 0.01


@dataclass(frozen=True)
class Exported:
    path: Path
    quantization: str
    ops: tuple[str, ...]
    size_bytes: int
    fallback: str = ""  # why the quantizations before `quantization` failed ("" for int8)


def _quiet_tensorflow() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


Representative = np.ndarray | Sequence[np.ndarray]


def _samples(model: Any, representative: Representative) -> Callable[[], Iterator[dict]]:
    """One calibration example at a time, one array per model input in the model's order;
    integer inputs (token ids) stay integers."""
    arrays = (list(representative) if isinstance(representative, list | tuple)
              else [representative])
    if len(arrays) != len(model.inputs):
        raise ValueError(f"representative set has {len(arrays)} arrays for "
                         f"{len(model.inputs)} model inputs")
    dtypes = [np.int32 if "int" in str(t.dtype) else np.float32 for t in model.inputs]
    names = [t.name.split(":")[0] for t in model.inputs]

    def samples() -> Iterator[dict[str, np.ndarray]]:
        # keyed by input name: the converter's own input order is not the model's
        for i in range(len(arrays[0])):
            yield {n: np.asarray(a[i : i + 1]).astype(d)
                   for n, a, d in zip(names, arrays, dtypes, strict=True)}

    return samples


def _converter(model: Any, quantization: str, representative: Representative | None) -> Any:
    tf = _quiet_tensorflow()
    warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
    warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")  # calibrator
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantization == "float32":
        return converter
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "int8":
        if representative is None or len(representative) == 0:
            raise ValueError("int8 quantization needs a representative set")
        converter.representative_dataset = _samples(model, representative)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.float32
        converter.inference_output_type = tf.float32
    elif quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    return converter


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for the block (native libraries write there)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def convert(model: Any, path: Path, quantization: str,
            representative: Representative | None = None) -> Exported:
    """Convert one Keras model to one .tflite file at `path` and check what came out."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keras prints the exported signature, the converter's C++ core its quantization settings
    # (straight to fd 2, past the progress bar); its failures still arrive as exceptions.
    with contextlib.redirect_stdout(io.StringIO()), _native_stderr_silenced():
        flatbuffer = _converter(model, quantization, representative).convert()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(flatbuffer)
    runner = open_runner(tmp)
    if quantization == "int8":
        leftover = float_compute_ops(runner)
        if leftover:
            tmp.unlink()
            raise ValueError(f"int8 conversion left float compute ops: {leftover}")
    ops = tuple(runner.op_types())
    del runner
    tmp.replace(path)
    return Exported(path=path, quantization=quantization, ops=ops, size_bytes=len(flatbuffer))


def first_line(exc: Exception, limit: int = 200) -> str:
    """An exception's first line (converter errors run to pages), or its type."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


def convert_link(model: Any, path: Path, representative: Representative,
                 order: tuple[str, ...] = QUANTIZATIONS,
                 converter: Callable[..., Exported] = convert) -> Exported:
    """int8 first; on failure the next quantization in `order`, for this link only. Why the
    earlier ones failed travels with the result (`Exported.fallback`), not as a warning."""
    failures: list[str] = []
    for quantization in order:
        try:
            exported = converter(model, path, quantization, representative)
        except Exception as exc:  # the converter raises many kinds
            log.debug("%s: %s conversion failed: %s", path.name, quantization, exc)
            failures.append(f"{quantization}: {first_line(exc)}")
            continue
        if failures:
            exported = dataclasses.replace(exported, fallback="; ".join(failures))
        return exported
    raise RuntimeError(f"{path.name}: no quantization worked ({'; '.join(failures)})")


@dataclass(frozen=True)
class ExportedLink:
    """A link's files in a bundle: one for a vector target, encoder + decoder step for a
    sequence target. `quantization` is the least quantized of its parts."""

    file: str
    decoder: str
    quantization: str
    parts: dict[str, str]  # role -> quantization
    ops: tuple[str, ...]
    size_bytes: int
    fallback: str = ""  # why a part is not int8 ("" where every part is)


def export_link(trained: TrainedLink, target: TaskSpec, bundle_dir: Path, stem: str,
                converter: Callable[..., Exported] = convert,
                sequence_floor: float = SEQUENCE_FLOOR,
                check: tuple[np.ndarray, np.ndarray] | None = None,
                slack: float = AGREEMENT_SLACK) -> ExportedLink:
    """Convert every part of a trained link to `links/<stem>[.<role>].tflite` under the bundle,
    each int8 first with its own op-check fallback. A sequence link is also decoded through
    its files on `trained.check_inputs`: below `sequence_floor` agreement with the float link
    (errors compound over the steps), its decoder step falls back to the next quantization,
    unless `check` (source outputs, the target model's outputs on rows the link did not fit)
    shows the files agree with the target model within `slack` of the float link: a weak
    link's near-tied tokens flip under int8 between tokens that are equally wrong."""
    start = dict.fromkeys((p.role for p in trained.parts), 0)
    reasons: list[str] = []
    while True:
        files: dict[str, str] = {}
        exported: dict[str, Exported] = {}
        for part in trained.parts:
            suffix = "" if part.role == "link" else f".{part.role}"
            relative = f"links/{stem}{suffix}.tflite"
            exported[part.role] = convert_link(part.model, bundle_dir / relative,
                                               part.representative,
                                               QUANTIZATIONS[start[part.role]:], converter)
            files[part.role] = relative
        if "decoder" not in files:
            break
        runner = open_link_files(target, bundle_dir / files["encoder"],
                                 bundle_dir / files["decoder"])
        same = mean_agreement(target, runner(trained.check_inputs),
                              trained.predict(trained.check_inputs))
        used = QUANTIZATIONS.index(exported["decoder"].quantization)
        if same >= sequence_floor or used + 1 >= len(QUANTIZATIONS):
            break
        lost = ""
        if check is not None:
            files_score = mean_agreement(target, runner(check[0]), check[1])
            float_score = mean_agreement(target, trained.predict(check[0]), check[1])
            if files_score >= float_score - slack:
                break
            lost = (f" and agrees {files_score:.3f} with the target on calibration frames "
                    f"(float link {float_score:.3f})")
        reasons.append(f"decoder {exported['decoder'].quantization}: decodes {same:.3f} like "
                       f"the float link (< {sequence_floor:.2f}){lost}")
        log.debug("%s: %s", stem, reasons[-1])
        start["decoder"] = used + 1
    parts = {role: e.quantization for role, e in exported.items()}
    return ExportedLink(
        file=files.get("link", files.get("encoder", "")),
        decoder=files.get("decoder", ""),
        quantization=max(parts.values(), key=QUANTIZATIONS.index),
        parts=parts,
        ops=tuple(sorted({op for e in exported.values() for op in e.ops})),
        size_bytes=sum(e.size_bytes for e in exported.values()),
        fallback="; ".join([*reasons, *(f"{role} {e.fallback}" for role, e in exported.items()
                                        if e.fallback)]),
    )
