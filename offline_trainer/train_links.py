"""Recording -> bundle: train every pairwise link, quantize it, profile it, write the bundle.

All agreement figures are measured on held-out frames of the recording (those not used
for training), through the int8 files and the LiteRT interpreter, as the agent will run them.
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from links_tflite.agreement import mean_agreement
from links_tflite.bundle import PROFILE, Profile, link_name, write_manifest
from links_tflite.ensemble import combine
from links_tflite.interpreter import TFLiteRunner
from links_tflite.recording import Recording, RecordingError
from links_tflite.tasks import activate
from offline_trainer.export import convert_link
from offline_trainer.links import LOSS, LinkTraining, logits_model, train_vec2vec
from offline_trainer.zoo import measure_delay_ms

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LinkResult:
    source: str
    target: str
    file: str
    quantization: str
    ops: tuple[str, ...]
    size_bytes: int
    delay_ms: float
    agreement: float  # int8 link vs the target model's exact output, held-out
    float_agreement: float  # the float Keras link vs the exact output, held-out
    int8_vs_float: float  # int8 file vs its float original, held-out
    held_out_outputs: np.ndarray  # the int8 file's outputs (activated) on held-out frames
    held_out_float: np.ndarray  # the float Keras link's outputs on the same frames


def split_rows(n: int, train_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random train / held-out split; the held-out part is never trained on."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train fraction must be in (0, 1), got {train_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    cut = max(1, min(n - 1, round(n * train_fraction)))
    return np.sort(order[:cut]), np.sort(order[cut:])


def linkable_pairs(recording: Recording) -> list[tuple[str, str]]:
    tasks = recording.tasks
    return [
        (s, t)
        for s, t in itertools.permutations(recording.models, 2)
        if tasks[s].kind != "sequence" and tasks[t].kind in LOSS
    ]


def train_one_link(recording: Recording, source: str, target: str, train: np.ndarray,
                   held_out: np.ndarray, links_dir: Path, training: LinkTraining) -> LinkResult:
    tasks = recording.tasks
    x, y = recording.outputs[source], recording.outputs[target]
    model = train_vec2vec(tasks[source], tasks[target], x[train], y[train], training)
    relative = f"links/{source}__{target}.tflite"
    exported = convert_link(logits_model(model), links_dir.parent / relative,
                            representative=x[train])
    runner = TFLiteRunner(exported.path)
    spec = tasks[target]
    quantized = activate(spec.activation, runner(x[held_out]))
    floating = np.asarray(model(x[held_out], training=False))
    return LinkResult(
        source=source,
        target=target,
        file=relative,
        quantization=exported.quantization,
        ops=exported.ops,
        size_bytes=exported.size_bytes,
        delay_ms=measure_delay_ms(runner, x[held_out][0]),
        agreement=mean_agreement(spec, quantized, y[held_out]),
        float_agreement=mean_agreement(spec, floating, y[held_out]),
        int8_vs_float=mean_agreement(spec, quantized, floating),
        held_out_outputs=quantized,
        held_out_float=floating,
    )


SubsetTable = dict[str, dict[frozenset[str], float]]


def profile_ensembles(recording: Recording, results: list[LinkResult], held_out: np.ndarray,
                      pairwise: dict[str, dict[str, float]]) -> SubsetTable:
    """Agreement of each target's ensemble for every subset of its sources (held-out)."""
    table: SubsetTable = {}
    for target in recording.models:
        into = {r.source: r for r in results if r.target == target}
        table[target] = {}
        for size in range(1, len(into) + 1):
            for subset in itertools.combinations(sorted(into), size):
                predicted = combine(
                    [into[s].held_out_outputs for s in subset],
                    [pairwise[target][s] for s in subset],
                )
                table[target][frozenset(subset)] = mean_agreement(
                    recording.tasks[target], predicted, recording.outputs[target][held_out]
                )
    return table


def write_bundle(recording: Recording, results: list[LinkResult], profile: Profile,
                 staging: Path, out: Path, meta: dict[str, Any]) -> None:
    (staging / PROFILE).write_text(json.dumps(profile.to_dict(), indent=2) + "\n")
    write_manifest(
        staging,
        {
            **meta,
            "workload": recording.workload,
            "models": {m: {"task": spec.to_dict()} for m, spec in recording.tasks.items()},
            "links": [
                {"source": r.source, "target": r.target, "file": r.file, "architecture": "vec2vec",
                 "output": "logits", "quantization": r.quantization, "ops": list(r.ops)}
                for r in results
            ],
            "ensembles": [
                {"target": m, "method": "agreement_weighted_links",
                 "sources": sorted(r.source for r in results if r.target == m)}
                for m in recording.models
            ],
            "profile": PROFILE,
        },
    )
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(staging), str(out))


def train_bundle(recording_path: Path, out: Path, train_fraction: float = 0.7,
                 training: LinkTraining | None = None) -> list[LinkResult]:
    """The whole `mlink-train links` step; returns the per-link results for the summary."""
    training = training or LinkTraining()
    recording = Recording.load(recording_path)
    if len(recording) < 10:
        raise RecordingError(f"{recording_path}: {len(recording)} frames, at least 10 are needed")
    train, held_out = split_rows(len(recording), train_fraction, training.seed)
    pairs = linkable_pairs(recording)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".bundle-", dir=out.parent))
    try:
        results = [
            train_one_link(recording, s, t, train, held_out, staging / "links", training)
            for s, t in tqdm(pairs, desc="links", unit="link")
        ]
        pairwise: dict[str, dict[str, float]] = {m: {} for m in recording.models}
        for r in results:
            pairwise[r.target][r.source] = r.agreement
        profile = Profile(
            pairwise=pairwise,
            ensembles=profile_ensembles(recording, results, held_out, pairwise),
            links={
                link_name(r.source, r.target): {
                    "size_bytes": r.size_bytes, "delay_ms": r.delay_ms,
                    "float_agreement": r.float_agreement, "int8_vs_float": r.int8_vs_float,
                }
                for r in results
            },
            held_out_frames=len(held_out),
        )
        meta = {"train_fraction": train_fraction, "train_frames": len(train),
                "seed": training.seed, "epochs": training.epochs}
        write_bundle(recording, results, profile, staging, out, meta)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return results


def summary_table(results: list[LinkResult]) -> str:
    header = f"{'link':<22}{'quant':<15}{'agreement':>10}{'float':>8}{'int8~float':>11}{'ms':>8}"
    rows = [
        f"{link_name(r.source, r.target):<22}{r.quantization:<15}{r.agreement:>10.3f}"
        f"{r.float_agreement:>8.3f}{r.int8_vs_float:>11.3f}{r.delay_ms:>8.3f}"
        for r in results
    ]
    return "\n".join([header, *rows])
