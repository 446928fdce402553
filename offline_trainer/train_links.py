"""Recording -> bundle: train every pairwise link, quantize it, keep those that beat their
target's prior, fit the ensembles, profile them, write the bundle.

The recording's frames are split three ways (seeded): the training fraction is cut into the
frames the links fit on and a calibration slice (`CALIBRATION_SHARE` of it, never fit on),
and the rest is held out. On the calibration frames, through the exported files:
- every link stops training early (its loss there stops improving);
- a link is kept only if it beats its target's prior (the constant predictor fit on the
  training frames, `links_tflite.prior`) by `PRIOR_MARGIN`: one that does not is left out of
  the bundle (neither loaded, run nor charged by the agent), and listed in the manifest's
  `dropped_links` with its figures;
- the ensembles' weights are fit (`offline_trainer.ensembles.calibrated_weights`).
Every link's architecture follows the two models' output formats (vec2vec, seq2vec, vec2seq,
seq2seq); a link into a sequence target may instead be a bag-of-tokens link (vec2bag,
seq2bag: `train_sequence_link`), the decoder left untrained on a large vocabulary.
All agreement figures of the profile, the priors' included, are measured on the held-out
frames (never trained or calibrated on), through the exported files and the LiteRT
interpreter, with the same ensemble code the agent runs
(`links_tflite.ensemble.combine_outputs`).
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from links_tflite.agreement import agreement, mean_agreement
from links_tflite.bag import BAG_OUTPUT, BagDecoding
from links_tflite.bundle import PROFILE, Profile, link_name, write_manifest
from links_tflite.ensemble import (
    LEARNED,
    MIN_SHARE,
    POOLING,
    combine_outputs,
    open_link_files,
)
from links_tflite.prior import clamp, fit_prior, output_range, prior_outputs
from links_tflite.recording import Recording, RecordingError
from links_tflite.tasks import TaskSpec
from offline_trainer.bag_links import bag_link, fit_bag, ordered_oracle_scores
from offline_trainer.ensembles import calibrated_weights, profiled_subsets, subset_case
from offline_trainer.export import export_link
from offline_trainer.links import LinkTraining, TrainedLink, architecture, train_link
from offline_trainer.probe import probe_scores
from offline_trainer.zoo import measure_delay_ms

log = logging.getLogger(__name__)

CALIBRATION_SHARE = 0.2  # of the training frames: what links are checked on, not fit on
PRIOR_MARGIN = 0.01  # a link ships only if it beats its target's prior by this much...
PRIOR_STANDARD_ERRORS = 1.0  # ... and by this many standard errors of the per-frame gain
LARGE_VOCABULARY = 512  # a sequence target with this many tokens: the bag link first
BAG_STANDARD_ERRORS = 1.0  # on a smaller one, the bag must beat the decoder by this much


@dataclass(frozen=True)
class LinkResult:
    source: str
    target: str
    file: str
    decoder: str  # the one-step decoder file of a sequence target, else ""
    architecture: str
    quantization: str
    parts: dict[str, str]  # role -> quantization (link, or encoder and decoder)
    ops: tuple[str, ...]
    size_bytes: int
    fallback: str  # why a part is not int8 ("" where every part is)
    delay_ms: float
    agreement: float  # the exported link vs the target model's exact output, held-out
    float_agreement: float  # the float Keras link vs the exact output, held-out
    int8_vs_float: float  # the exported link vs its float original, held-out
    held_out_outputs: np.ndarray  # the exported link's outputs (activated) on held-out frames
    held_out_float: np.ndarray  # the float Keras link's outputs on the same frames
    calibration_outputs: np.ndarray  # the exported link's outputs on the calibration frames
    calibration_scores: np.ndarray  # ... their per-frame agreement with the target model's
    exported: bool = True  # False: the float link did not beat the prior, no file was made
    probed_out: bool = False  # True: not even trained, a linear probe did not beat the prior
    bag: BagDecoding | None = None  # a bag link's read-out (links_tflite.bag)
    choice: str = ""  # into a sequence target: bag link or decoder, and why

    @property
    def output(self) -> str:
        return BAG_OUTPUT if self.bag is not None else "tokens" if self.decoder else "logits"

    @property
    def calibration_agreement(self) -> float:
        return float(self.calibration_scores.mean())


@dataclass(frozen=True)
class TargetPrior:
    """A target's constant predictor, its range (regression) and its agreement."""

    output: np.ndarray
    bounds: tuple[np.ndarray, np.ndarray] | None
    calibration_scores: np.ndarray  # per calibration frame: what a link must beat
    held_out: float

    @property
    def calibration(self) -> float:
        return float(self.calibration_scores.mean())

    def to_manifest(self) -> dict[str, list[float]]:
        entry = {"output": [float(v) for v in self.output]}
        if self.bounds is not None:
            entry["low"] = [float(v) for v in self.bounds[0]]
            entry["high"] = [float(v) for v in self.bounds[1]]
        return entry


@dataclass(frozen=True)
class TrainReport:
    links: list[LinkResult]  # the links shipped
    weights: dict[str, dict[str, float]]  # target -> source -> learned ensemble weight
    profile: Profile
    dropped: list[LinkResult] = field(default_factory=list)  # not better than the prior
    priors: dict[str, TargetPrior] = field(default_factory=dict)


def split_rows(n: int, train_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random train / held-out split; the held-out part is never trained on."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train fraction must be in (0, 1), got {train_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    cut = max(1, min(n - 1, round(n * train_fraction)))
    return np.sort(order[:cut]), np.sort(order[cut:])


def calibration_split(train: np.ndarray, seed: int,
                      share: float = CALIBRATION_SHARE) -> tuple[np.ndarray, np.ndarray]:
    """The training rows cut into (rows the links fit on, calibration rows), seeded. With
    fewer than 2 training rows both are the training rows (nothing can be set aside)."""
    if len(train) < 2:
        return train, train
    order = np.random.default_rng(seed + 1).permutation(len(train))
    cut = max(1, min(len(train) - 1, round(len(train) * share)))
    return np.sort(train[order[cut:]]), np.sort(train[order[:cut]])


def target_prior(spec: TaskSpec, y: np.ndarray, train: np.ndarray, calibration: np.ndarray,
                 held_out: np.ndarray, seed: int = 0) -> TargetPrior:
    """The target's prior fit on the training frames, scored on calibration and held out."""
    output = fit_prior(spec, y[train], seed)
    return TargetPrior(
        output=output,
        bounds=output_range(y[train]) if spec.kind == "regression" else None,
        calibration_scores=agreement(spec, prior_outputs(output, len(calibration)),
                                     y[calibration]),
        held_out=mean_agreement(spec, prior_outputs(output, len(held_out)), y[held_out]),
    )


def linkable_pairs(recording: Recording) -> list[tuple[str, str]]:
    """Every ordered pair: each (source, target) format has an architecture."""
    return list(itertools.permutations(recording.models, 2))


def train_one_link(recording: Recording, source: str, target: str, train: np.ndarray,
                   held_out: np.ndarray, bundle_dir: Path, training: LinkTraining,
                   prior: TargetPrior | None = None) -> LinkResult:
    """One link fit on the training rows less the calibration slice (`calibration_split`),
    stopped early there, exported, and scored there and on the held-out rows. A regression
    link's outputs are clamped to the range the target produced on the training rows.
    Given its target's `prior`, a float link that does not beat it on the calibration rows
    is not exported (`exported` False; its figures are the float link's)."""
    tasks = recording.tasks
    x, y = recording.outputs[source], recording.outputs[target]
    spec = tasks[target]
    fit, calibration = calibration_split(train, training.seed)
    if prior is not None:
        probed = probe_scores(tasks[source], spec, x[fit], y[fit], x[calibration],
                              y[calibration])
        if probed is not None and probed.mean() <= prior.calibration:
            held = probe_scores(tasks[source], spec, x[fit], y[fit], x[held_out], y[held_out],
                                minimum=0)
            figure = float(held.mean()) if held is not None else float("nan")
            nothing = np.zeros((0,), np.float32)
            return LinkResult(
                source=source, target=target, file="", decoder="",
                architecture=architecture(tasks[source], spec), quantization="", parts={},
                ops=(), size_bytes=0, fallback="", delay_ms=0.0, agreement=figure,
                float_agreement=figure, int8_vs_float=1.0, held_out_outputs=nothing,
                held_out_float=nothing, calibration_outputs=nothing, calibration_scores=probed,
                exported=False, probed_out=True)
    if spec.kind == "sequence":
        trained, choice = train_sequence_link(tasks[source], spec, x, y, fit, calibration,
                                              training, prior)
    else:
        trained, choice = train_link(tasks[source], spec, x[fit], y[fit], training,
                                     (x[calibration], y[calibration])), ""
    bounds = output_range(y[train]) if spec.kind == "regression" else None
    floating = clamp(trained.predict(x[held_out]), bounds)
    if prior is not None:
        calibrated = clamp(trained.predict(x[calibration]), bounds)
        scores = agreement(spec, calibrated, y[calibration])
        if not beats_prior(scores, prior):
            float_agreement = mean_agreement(spec, floating, y[held_out])
            return LinkResult(
                source=source, target=target, file="", decoder="",
                architecture=trained.architecture, quantization="", parts={}, ops=(),
                size_bytes=0, fallback="", delay_ms=0.0, agreement=float_agreement,
                float_agreement=float_agreement, int8_vs_float=1.0,
                held_out_outputs=floating, held_out_float=floating,
                calibration_outputs=calibrated, calibration_scores=scores, exported=False,
                bag=trained.bag, choice=choice)
    exported = export_link(trained, spec, bundle_dir, f"{source}__{target}",
                           check=(x[calibration], y[calibration]))
    runner = open_link_files(spec, bundle_dir / exported.file,
                             bundle_dir / exported.decoder if exported.decoder else None,
                             bounds=bounds, bag=trained.bag)
    shipped = runner(x[held_out])
    calibrated = runner(x[calibration])
    return LinkResult(
        source=source,
        target=target,
        file=exported.file,
        decoder=exported.decoder,
        architecture=trained.architecture,
        quantization=exported.quantization,
        parts=exported.parts,
        ops=exported.ops,
        size_bytes=exported.size_bytes,
        fallback=exported.fallback,
        delay_ms=measure_delay_ms(runner, x[held_out][0]),
        agreement=mean_agreement(spec, shipped, y[held_out]),
        float_agreement=mean_agreement(spec, floating, y[held_out]),
        int8_vs_float=mean_agreement(spec, shipped, floating),
        held_out_outputs=shipped,
        held_out_float=floating,
        calibration_outputs=calibrated,
        calibration_scores=agreement(spec, calibrated, y[calibration]),
        bag=trained.bag,
        choice=choice,
    )


def train_sequence_link(source: TaskSpec, target: TaskSpec, x: np.ndarray, y: np.ndarray,
                        fit: np.ndarray, calibration: np.ndarray, training: LinkTraining,
                        prior: TargetPrior | None) -> tuple[TrainedLink, str]:
    """A link into a sequence target: the bag link (`offline_trainer.bag_links`, seconds in
    numpy) or the decoder (vec2seq / seq2seq), whichever agrees better with the target on
    the calibration frames, with why: on a vocabulary of `LARGE_VOCABULARY` tokens or more
    the bag on a tie (one small file, no loop); on a smaller one the decoder unless the bag
    is better by `BAG_STANDARD_ERRORS` standard errors of the paired per-frame gain (with
    few calibration frames a tie is luck, and the decoder also learns order and repeats).
    On a large vocabulary the decoder is not trained where the bag already
    beats the prior, nor where even the bag's tokens put in the target's own order
    (`ordered_oracle_scores`) do not: it could not beat the prior either."""
    check = (x[calibration], y[calibration])
    bag = fit_bag(source, target, x[fit], y[fit], training, check)
    if bag is None:
        return train_link(source, target, x[fit], y[fit], training, check), (
            "decoder: no token is held by enough training frames for a bag link")
    bag_predicted = bag.predict(check[0])
    bag_scores = agreement(target, bag_predicted, check[1])
    if target.vocab_size >= LARGE_VOCABULARY:
        large = f"vocabulary of {target.vocab_size} tokens"
        if prior is None or beats_prior(bag_scores, prior):
            return bag_link(bag, x[fit], training), (
                f"bag {bag_scores.mean():.3f} on calibration frames; decoder not trained "
                f"({large}, the bag beats the prior)")
        oracle = ordered_oracle_scores(bag_predicted, check[1])
        if not beats_prior(oracle, prior):
            return bag_link(bag, x[fit], training), (
                f"bag {bag_scores.mean():.3f} on calibration frames; decoder not trained "
                f"({large}: the bag's tokens in the target's own order reach "
                f"{oracle.mean():.3f}, not better than the prior)")
    decoder = train_link(source, target, x[fit], y[fit], training, check)
    decoder_scores = agreement(target, decoder.predict(check[0]), check[1])
    figures = (f"bag {bag_scores.mean():.3f}, decoder {decoder_scores.mean():.3f} on "
               "calibration frames")
    gain = bag_scores - decoder_scores
    spread = float(gain.std(ddof=1) / np.sqrt(len(gain))) if len(gain) > 1 else np.inf
    # on a large vocabulary the bag wins a tie (it is cheaper); on a small one the decoder,
    # which also learns the order and the repeats, unless the bag is better by one standard
    # error
    needed = 0.0 if target.vocab_size >= LARGE_VOCABULARY else BAG_STANDARD_ERRORS * spread
    if float(gain.mean()) >= needed:
        return bag_link(bag, x[fit], training), figures
    return decoder, figures


def beats_prior(scores: np.ndarray, prior: TargetPrior, margin: float = PRIOR_MARGIN,
                standard_errors: float = PRIOR_STANDARD_ERRORS) -> bool:
    """Whether a link is worth shipping, from its per-frame agreement on the calibration
    frames: its mean gain over the target's prior there is at least `margin` plus
    `standard_errors` standard errors of that mean (a small slice's luck is not a gain)."""
    gain = scores - prior.calibration_scores
    spread = float(gain.std(ddof=1) / np.sqrt(len(gain))) if len(gain) > 1 else 0.0
    return float(gain.mean()) >= margin + standard_errors * spread


def fit_agreements(recording: Recording, results: list[LinkResult], fit: np.ndarray,
                   bundle_dir: Path, priors: dict[str, TargetPrior],
                   ) -> dict[str, dict[str, np.ndarray]]:
    """Per target with two shipped links or more, each link's per-frame agreement on the
    frames it fit on, through its exported files (what breaks the calibration frames' ties
    between links, `offline_trainer.ensembles.link_order`)."""
    counts: dict[str, int] = {}
    for r in results:
        counts[r.target] = counts.get(r.target, 0) + 1
    scores: dict[str, dict[str, np.ndarray]] = {}
    for r in results:
        if counts[r.target] < 2:
            continue
        spec = recording.tasks[r.target]
        runner = open_link_files(spec, bundle_dir / r.file,
                                 bundle_dir / r.decoder if r.decoder else None,
                                 bounds=priors[r.target].bounds, bag=r.bag)
        scores.setdefault(r.target, {})[r.source] = agreement(
            spec, runner(recording.outputs[r.source][fit]), recording.outputs[r.target][fit])
    return scores


def fit_ensembles(recording: Recording, results: list[LinkResult], calibration: np.ndarray,
                  seed: int, fitting: dict[str, dict[str, np.ndarray]] | None = None,
                  ) -> dict[str, dict[str, float]]:
    """Per-source weights for every target, fit on the calibration frames (which the links
    did not train on); the links' agreement on the frames they fit on (`fitting`, by target
    and source) breaks the calibration frames' ties (`calibrated_weights`)."""
    return {
        target: calibrated_weights(
            recording.tasks[target],
            {r.source: r.calibration_outputs for r in results if r.target == target},
            recording.outputs[target][calibration],
            seed=seed, min_share=MIN_SHARE,
            fitting=(fitting or {}).get(target),
        )
        for target in recording.models
    }


def profile_ensembles(recording: Recording, results: list[LinkResult], held_out: np.ndarray,
                      weights: dict[str, dict[str, float]], seed: int = 0,
                      priors: dict[str, float] | None = None) -> Profile:
    """The held-out profile: pairwise agreement, and the shipped ensemble for every subset of
    each target's sources (sampled beyond MAX_ENUMERATED_SOURCES), with the paper's case."""
    pairwise: dict[str, dict[str, float]] = {m: {} for m in recording.models}
    for r in results:
        pairwise[r.target][r.source] = r.agreement
    table: dict[str, dict[frozenset[str], float]] = {}
    details: dict[str, dict[frozenset[str], dict[str, Any]]] = {}
    sampled: dict[str, bool] = {}
    for target in recording.models:
        into = {r.source: r for r in results if r.target == target}
        subsets, sampled[target] = profiled_subsets(sorted(into), seed)
        table[target], details[target] = {}, {}
        for subset in subsets:
            predicted = combine_outputs(recording.tasks[target], weights[target],
                                        {s: into[s].held_out_outputs for s in subset},
                                        min_share=MIN_SHARE)
            value = mean_agreement(recording.tasks[target], predicted,
                                   recording.outputs[target][held_out])
            best = max(pairwise[target][s] for s in subset)
            table[target][subset] = value
            details[target][subset] = {"best_single": best, "gain": value - best,
                                       "case": subset_case(value, best, len(subset))}
    return Profile(
        pairwise=pairwise,
        ensembles=table,
        links={
            link_name(r.source, r.target): {
                "architecture": r.architecture, "size_bytes": r.size_bytes,
                "delay_ms": r.delay_ms, "float_agreement": r.float_agreement,
                "int8_vs_float": r.int8_vs_float,
            }
            for r in results
        },
        held_out_frames=len(held_out),
        subset_details=details,
        subsets_sampled=sampled,
        priors=dict(priors or {}),
    )


def write_bundle(recording: Recording, report: TrainReport, staging: Path, out: Path,
                 meta: dict[str, Any]) -> None:
    (staging / PROFILE).write_text(json.dumps(report.profile.to_dict(), indent=2) + "\n")
    write_manifest(
        staging,
        {
            **meta,
            "workload": recording.workload,
            "models": {m: {"task": spec.to_dict()} for m, spec in recording.tasks.items()},
            "links": [
                {"source": r.source, "target": r.target, "file": r.file,
                 **({"decoder": r.decoder} if r.decoder else {}),
                 "architecture": r.architecture, "output": r.output,
                 **({"tokens": list(r.bag.tokens), "threshold": r.bag.threshold}
                    if r.bag is not None else {}),
                 **({"choice": r.choice} if r.choice else {}),
                 "quantization": r.quantization, "parts": r.parts, "ops": list(r.ops),
                 **({"fallback": r.fallback} if r.fallback else {})}
                for r in report.links
            ],
            "dropped_links": [
                {"source": r.source, "target": r.target, "architecture": r.architecture,
                 "reason": ("not trained: a linear probe from the source did not beat the "
                            "prior on calibration frames" if r.probed_out else
                            f"not better than the prior by {PRIOR_MARGIN} + "
                            f"{PRIOR_STANDARD_ERRORS:g} standard error on calibration frames"),
                 **({"choice": r.choice} if r.choice else {}),
                 "calibration_agreement": r.calibration_agreement,
                 "prior_calibration_agreement": report.priors[r.target].calibration,
                 "held_out_agreement": r.agreement}
                for r in report.dropped
            ],
            "priors": {m: p.to_manifest() for m, p in report.priors.items()},
            "ensembles": [
                {"target": m, "method": LEARNED, "pooling": POOLING[recording.tasks[m].kind],
                 "sources": sorted(report.weights[m]), "weights": report.weights[m],
                 "min_share": MIN_SHARE}
                for m in recording.models
            ],
            "profile": PROFILE,
        },
    )
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(staging), str(out))


def load_for_training(recording_path: Path, train_fraction: float,
                      models: tuple[str, ...] = ()) -> Recording:
    """The recording (only `models`, where given), validated (Recording.load), with enough
    frames and models to link."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"--train-fraction must be in (0, 1), got {train_fraction}")
    recording = Recording.load(recording_path)
    if models:
        recording = recording.select_models(models)
    if len(recording.models) < 2:
        raise RecordingError(f"{recording_path}: {len(recording.models)} model(s); links need "
                             "at least 2")
    if len(recording) < 10:
        raise RecordingError(f"{recording_path}: {len(recording)} frames, at least 10 are needed")
    return recording


def train_bundle_report(recording_path: Path, out: Path, train_fraction: float = 0.7,
                        training: LinkTraining | None = None,
                        models: tuple[str, ...] = (), keep_all: bool = False,
                        targets: tuple[str, ...] = ()) -> TrainReport:
    """The whole `mlink-train links` step (on `models` only, where given); returns links,
    ensemble weights and profile. `keep_all` ships every link, those not better than their
    target's prior included (test bundles that need links into every target); `targets`,
    where given, trains only the links into those (test bundles about one target)."""
    training = training or LinkTraining()
    recording = load_for_training(recording_path, train_fraction, models)
    train, held_out = split_rows(len(recording), train_fraction, training.seed)
    return train_on_rows(recording, train, held_out, out, training, keep_all,
                         {"train_fraction": train_fraction}, targets)


def train_on_rows(recording: Recording, train: np.ndarray, held_out: np.ndarray, out: Path,
                  training: LinkTraining, keep_all: bool = False,
                  meta: dict[str, Any] | None = None,
                  targets: tuple[str, ...] = ()) -> TrainReport:
    """The pipeline on a given split: the links fit on `train` less its calibration slice,
    the profile measured on `held_out` (rows never trained or calibrated on); the bundle is
    written to `out` (replaced whole). `mlink-train links` splits at random; the relinking
    worker (offline_trainer.relink) holds out the newest rows. `targets`, where given, are
    the only targets whose links are trained (every model is still a source)."""
    unknown = sorted(set(targets) - set(recording.models))
    if unknown:
        raise ValueError(f"targets {unknown} are not in the recording")
    pairs = [(s, t) for s, t in linkable_pairs(recording) if not targets or t in targets]
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".bundle-", dir=out.parent))
    _, calibration = calibration_split(train, training.seed)
    priors = {m: target_prior(spec, recording.outputs[m], train, calibration, held_out,
                              training.seed)
              for m, spec in recording.tasks.items()}
    try:
        results = [
            train_one_link(recording, s, t, train, held_out, staging, training,
                           None if keep_all else priors[t])
            for s, t in tqdm(pairs, desc="links", unit="link")
        ]
        # the exported file is checked again: quantization may cost the margin
        ships = [r.exported and (keep_all or beats_prior(r.calibration_scores, priors[r.target]))
                 for r in results]
        kept = [r for r, ok in zip(results, ships, strict=True) if ok]
        dropped = [r for r, ok in zip(results, ships, strict=True) if not ok]
        for r in dropped:
            for file in (r.file, r.decoder):
                if file:
                    (staging / file).unlink()
        fit, _ = calibration_split(train, training.seed)
        weights = fit_ensembles(recording, kept, calibration, training.seed,
                                fit_agreements(recording, kept, fit, staging, priors))
        profile = profile_ensembles(recording, kept, held_out, weights, training.seed,
                                    {m: p.held_out for m, p in priors.items()})
        report = TrainReport(kept, weights, profile, dropped, priors)
        write_bundle(recording, report, staging, out, {
            **(meta or {}), "train_frames": len(train), "calibration_frames": len(calibration),
            "links_shipped": "all" if keep_all else "better than the prior",
            "seed": training.seed, "epochs": training.epochs})
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return report


def train_bundle(recording_path: Path, out: Path, train_fraction: float = 0.7,
                 training: LinkTraining | None = None, keep_all: bool = False) -> list[LinkResult]:
    """As train_bundle_report, returning the per-link results."""
    return train_bundle_report(recording_path, out, train_fraction, training,
                               keep_all=keep_all).links


def summary_table(results: list[LinkResult], dropped: list[LinkResult] = ()) -> str:
    """One row per link (agreement held out; `calib` on the calibration frames); links not
    better than their target's prior are marked `dropped`."""
    header = (f"{'link':<26}{'arch':<9}{'quant':<15}{'agreement':>10}{'float':>8}"
              f"{'q~float':>9}{'calib':>7}{'KiB':>8}{'ms':>8}")
    rows = [
        f"{link_name(r.source, r.target):<26}{r.architecture:<9}{r.quantization:<15}"
        f"{r.agreement:>10.3f}{r.float_agreement:>8.3f}{r.int8_vs_float:>9.3f}"
        f"{r.calibration_agreement:>7.3f}{r.size_bytes / 1024:>8.1f}{r.delay_ms:>8.3f}"
        f"{'' if shipped else '  probed out' if r.probed_out else '  dropped'}"
        for r, shipped in [*((r, True) for r in results), *((r, False) for r in dropped)]
    ]
    return "\n".join([header, *rows])


def quantization_summary(results: list[LinkResult]) -> str:
    """One line: how many links are int8, and each fallback with its reason."""
    fallbacks = [r for r in results if r.quantization != "int8"]
    line = f"int8: {len(results) - len(fallbacks)} of {len(results)} shipped links"
    if fallbacks:
        line += "; not int8: " + "; ".join(
            f"{link_name(r.source, r.target)} {r.quantization} ({r.fallback or 'no reason'})"
            for r in fallbacks)
    return line


def ensemble_summary(report: TrainReport) -> str:
    """Per target: weights, the full-set ensemble vs its best link, and the subset cases."""
    lines = [f"{'target':<14}{'prior':>7}{'subsets':>8}{'full set':>10}{'best link':>10}  "
             "cases / weights"]
    for target, table in report.profile.ensembles.items():
        prior = report.profile.priors.get(target, float("nan"))
        if not table:
            lines.append(f"{target:<14}{prior:>7.3f}{0:>8}{'-':>10}{'-':>10}  no link beats "
                         "the prior: the prior serves it")
            continue
        full = max(table, key=len)
        details = report.profile.subset_details.get(target, {})
        cases: dict[str, int] = {}
        for subset in table:
            case = details.get(subset, {}).get("case", "")
            cases[case] = cases.get(case, 0) + 1
        weights = ", ".join(f"{s} {w:.2f}" for s, w in sorted(report.weights[target].items()))
        counted = ", ".join(f"{k} {v}" for k, v in sorted(cases.items()) if k != "single")
        lines.append(f"{target:<14}{prior:>7.3f}{len(table):>8}{table[full]:>10.3f}"
                     f"{details.get(full, {}).get('best_single', float('nan')):>10.3f}  "
                     f"{counted or '-'} | {weights}")
    return "\n".join(lines)
