"""Relink a group's links on its boxes' recent recordings and judge the result.

The boxes' newest uploads are merged in time order (at most `max_rows`, the newest); the
newest `holdout` share of the rows is held out; the trainer's own pipeline
(`train_links.train_on_rows`, what `mlink-train links` runs) trains the new bundle on the
older rows. Both bundles are then measured on the same
held-out rows, the same way (`evaluation.actions.measure_actions`: every link file through
LiteRT, every source subset pooled by the bundle's own ensemble rule, the prior), and the
decision figure is, for each of the bundle's models, the best agreement the bundle serves it
with when it is predicted — its best ensemble over any subset of its linked sources, or its
prior where that is better — averaged over the models. The new bundle is rolled out only if
its figure beats the one in force by `margin`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from links_tflite.bundle import load_bundle
from links_tflite.ensemble import EnsemblePredictor
from links_tflite.recording import Recording
from offline_trainer.evaluation.actions import measure_actions
from offline_trainer.links import LinkTraining
from offline_trainer.relink.choice import keep_in_force
from offline_trainer.relink.store import Stored, merge, time_split
from offline_trainer.train_links import calibration_split, train_on_rows

log = logging.getLogger(__name__)

ROLL_OUT, KEEP, WAIT = "roll_out", "keep", "wait"
MIN_VALIDATION_ROWS = 20


@dataclass(frozen=True)
class Figure:
    """A bundle measured on the held-out rows: per model, its best predicted agreement."""

    mean: float
    per_model: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"mean": round(self.mean, 4),
                "per_model": {m: round(v, 4) for m, v in self.per_model.items()}}


@dataclass(frozen=True)
class Decision:
    action: str  # roll_out, keep, wait
    why: str
    rows: int = 0
    train_rows: int = 0
    held_out_rows: int = 0
    uploads: list[str] = field(default_factory=list)  # <device>/<upload> trained on
    old: Figure | None = None
    new: Figure | None = None
    bundle: Path | None = None  # the new bundle (roll_out and keep)
    # targets whose links the new bundle takes from the bundle in force (module doc)
    kept_in_force: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"decision": self.action, "why": self.why, "rows": self.rows,
                "train_rows": self.train_rows, "held_out_rows": self.held_out_rows,
                "uploads": self.uploads, "kept_in_force": self.kept_in_force,
                "old": None if self.old is None else self.old.to_dict(),
                "new": None if self.new is None else self.new.to_dict(),
                "bundle": None if self.bundle is None else self.bundle.name}


def bundle_figure(bundle_dir: Path, recording: Recording, rows: Any) -> Figure:
    """The decision figure (module doc) of the bundle on these rows of the recording."""
    bundle = load_bundle(bundle_dir)
    predictor = EnsemblePredictor(bundle)
    rules = {target: predictor.rule(target) for target in bundle.models}
    exact = {m: recording.outputs[m][rows] for m in bundle.models}
    cameras = recording.camera_ids[rows] if recording.camera_ids is not None else rows * 0
    figures = measure_actions(bundle, rules, exact, cameras)
    per_model = {}
    for model in bundle.models:
        offers = [*figures.profile.ensembles.get(model, {}).values()]
        if model in figures.priors:
            offers.append(figures.priors[model])
        per_model[model] = max(offers, default=0.0)
    return Figure(sum(per_model.values()) / max(1, len(per_model)), per_model)


class Relinker:
    def __init__(self, training: LinkTraining, min_rows: int = 1000, holdout: float = 0.3,
                 margin: float = 0.01, max_rows: int = 200_000,
                 per_target: bool = True) -> None:
        if not 0.0 < holdout < 1.0:
            raise ValueError(f"--holdout must be in (0, 1), got {holdout}")
        if not 20 <= min_rows <= max_rows:
            raise ValueError(f"--min-rows must be in [20, --max-rows = {max_rows}], "
                             f"got {min_rows}")
        if not 0.0 <= margin < 1.0:
            raise ValueError(f"--margin must be in [0, 1), got {margin}")
        self.training, self.min_rows, self.holdout, self.margin, self.max_rows = (
            training, min_rows, holdout, margin, max_rows)
        self.per_target = per_target

    def relink(self, stored: list[Stored], in_force: Path, out: Path) -> Decision:
        """Train on the stored recordings' older rows into `out`, measure both bundles on
        the newest, decide (module doc)."""
        models = list(load_bundle(in_force).models)
        parts = []
        for item in stored:
            recording = Recording.load(item.path)
            if all(m in recording.tasks for m in models):
                parts.append((item.job.device, recording.select_models(models)))
        uploads = [f"{s.job.device}/{s.job.upload}" for s in stored]
        rows = sum(len(r) for _, r in parts)
        if rows < self.min_rows:
            return Decision(WAIT, f"{rows} rows from {len(parts)} box(es), {self.min_rows} "
                                  "needed to relink", rows=rows, uploads=uploads)
        merged = merge(parts, models)
        if len(merged) > self.max_rows:  # the newest rows: the stream as it is now
            merged = merged.subset(np.arange(len(merged) - self.max_rows, len(merged)))
        train, held_out = time_split(len(merged), self.holdout)
        log.info("relinking on %d rows (%d held out, the newest) from %s", rows, len(held_out),
                 ", ".join(uploads))
        report = train_on_rows(merged, train, held_out, out, self.training,
                               meta={"relinked_from": uploads, "held_out": "the newest "
                                     f"{self.holdout:g} of the rows by time"})
        kept: list[str] = []
        if self.per_target:  # per target, the better links on the validation slice
            _, calibration = calibration_split(train, self.training.seed)
            # the validation slice: the calibration rows of the newer half of the training
            # rows (the stream as it is now), where they are enough
            recent = calibration[calibration >= train[len(train) // 2]]
            validation = recent if len(recent) >= MIN_VALIDATION_ROWS else calibration
            was = bundle_figure(in_force, merged, validation).per_model
            now = bundle_figure(out, merged, validation).per_model
            spec = load_bundle(in_force).models  # a sequence target takes its new links
            kept = sorted(m for m in models if was[m] > now[m] and spec[m].kind != "sequence")
            if kept:
                log.info("links into %s kept from the bundle in force: on %d validation "
                         "rows %s", ", ".join(kept), len(validation), ", ".join(
                             f"{m} {was[m]:.4f} vs new {now[m]:.4f}" for m in kept))
                keep_in_force(report, set(kept), in_force, out, merged, train, calibration,
                              held_out, self.training.seed,
                              {"links_kept_in_force": kept})
        old = bundle_figure(in_force, merged, held_out)
        new = bundle_figure(out, merged, held_out)
        wins = new.mean >= old.mean + self.margin
        why = (f"new {new.mean:.4f} vs in force {old.mean:.4f} on {len(held_out)} held-out "
               f"rows: {'beats' if wins else 'does not beat'} it by the margin {self.margin:g}")
        return Decision(ROLL_OUT if wins else KEEP, why, rows=len(merged), train_rows=len(train),
                        held_out_rows=len(held_out), uploads=uploads, old=old, new=new,
                        bundle=out, kept_in_force=kept)
