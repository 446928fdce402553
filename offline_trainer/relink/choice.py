"""Per target, the new links or the ones in force: chosen on a validation slice.

Relinked on the recent rows, a target's new links can serve it worse than the links in force
(benchmarks/results/relink.md: the pedestrian count at 2 x 1600 evening rows), and one such
target can make the whole new bundle lose. So, per target, the links into it are taken from
whichever bundle serves it better on a validation slice (`Relinker.relink` chooses: the
calibration rows, `calibration_split`, of the newer half of the training rows), which the new
links were not fit on and which is not the held-out slice the decision is measured on (the
figure: `relinker.bundle_figure`). Where
the bundle in force wins a target, its links into that target are copied into the new
bundle, every link's outputs are taken again on the calibration and held-out rows, and the
ensembles' weights, the profile and the manifest are made again by the trainer's own
pipeline (`fit_ensembles`, `profile_ensembles`, `write_bundle`). Vector targets only: the
links into a sequence target (a decoder, a bag read-out) are always the new ones."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path

import numpy as np

from links_tflite.agreement import agreement, mean_agreement
from links_tflite.bundle import Bundle, LinkEntry, load_bundle
from links_tflite.ensemble import open_link_files
from links_tflite.prior import output_range
from links_tflite.recording import Recording
from offline_trainer.train_links import (
    LinkResult,
    TrainReport,
    fit_ensembles,
    profile_ensembles,
    write_bundle,
)


def in_force_result(bundle: Bundle, link: LinkEntry, recording: Recording, train: np.ndarray,
                    calibration: np.ndarray, held_out: np.ndarray) -> LinkResult:
    """A link of the bundle in force, scored as `train_one_link` scores a new one (its
    delay: the one its bundle's profile states)."""
    spec = recording.tasks[link.target]
    x, y = recording.outputs[link.source], recording.outputs[link.target]
    bounds = output_range(y[train]) if spec.kind == "regression" else None
    runner = open_link_files(spec, bundle.path_of(link),
                             bundle.decoder_path_of(link) if link.decoder else None,
                             bounds=bounds)
    shipped, calibrated = runner(x[held_out]), runner(x[calibration])
    figure = mean_agreement(spec, shipped, y[held_out])
    return LinkResult(
        source=link.source, target=link.target, file=link.file, decoder=link.decoder,
        architecture=link.architecture, quantization=link.quantization,
        parts={"link": link.quantization}, ops=link.ops,
        size_bytes=bundle.path_of(link).stat().st_size, fallback="",
        delay_ms=float(bundle.profile.links.get(link.name, {}).get("delay_ms", 0.0)),
        agreement=figure,
        float_agreement=figure, int8_vs_float=1.0, held_out_outputs=shipped,
        held_out_float=shipped, calibration_outputs=calibrated,
        calibration_scores=agreement(spec, calibrated, y[calibration]))


def keep_in_force(report: TrainReport, targets: set[str], in_force: Path, new: Path,
                  recording: Recording, train: np.ndarray, calibration: np.ndarray,
                  held_out: np.ndarray, seed: int, meta: dict[str, object]) -> TrainReport:
    """Rewrite the new bundle at `new` with the links into `targets` taken from the bundle in
    force (module doc); returns the new bundle's report."""
    old = load_bundle(in_force)
    links = [r for r in report.links if r.target not in targets]
    links += [in_force_result(old, link, recording, train, calibration, held_out)
              for link in old.links if link.target in targets]
    staging = Path(tempfile.mkdtemp(prefix=".bundle-", dir=new.parent))
    try:
        for result in links:
            origin = in_force if result.target in targets else new
            for file in filter(None, (result.file, result.decoder)):
                (staging / file).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(origin / file, staging / file)
        weights = fit_ensembles(recording, links, calibration, seed)
        profile = profile_ensembles(recording, links, held_out, weights, seed,
                                    {m: p.held_out for m, p in report.priors.items()})
        chosen = dataclasses.replace(report, links=links, weights=weights, profile=profile,
                                     dropped=[r for r in report.dropped
                                              if r.target not in targets])
        manifest = load_bundle(new).manifest
        write_bundle(recording, chosen, staging, new, {
            **{k: v for k, v in manifest.items() if k in (
                "relinked_from", "held_out", "train_frames", "calibration_frames",
                "links_shipped", "seed", "epochs")},
            **meta})
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return chosen
