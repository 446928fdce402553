"""The relinker's per-target choice (offline_trainer.relink.choice): the links into a target
taken from the bundle in force are copied into the new bundle with their ensemble, and the
new bundle is whole again. On the committed digits fixture (its bundle as the one in force);
the "new" bundle lacks the links into one target, as a relink that dropped them would."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from links_tflite.bundle import load_bundle
from links_tflite.recording import Recording
from offline_trainer.relink.choice import in_force_result, keep_in_force
from offline_trainer.train_links import (
    TrainReport,
    calibration_split,
    fit_ensembles,
    profile_ensembles,
    target_prior,
    write_bundle,
)

pytestmark = pytest.mark.trainer  # the ensembles' weights are fit with TensorFlow


def test_links_kept_in_force_come_back_whole(digits_fixture, tmp_path: Path) -> None:
    in_force = digits_fixture.root / "bundle"
    old = load_bundle(in_force)
    recording = Recording.load(digits_fixture.root / "stream.npz").select_models(
        list(old.models))
    train, held_out = np.arange(40), np.arange(40, len(recording))
    _, calibration = calibration_split(train, 0)
    target = sorted(old.models)[0]
    links = [in_force_result(old, link, recording, train, calibration, held_out)
             for link in old.links if link.target != target]
    priors = {m: target_prior(spec, recording.outputs[m], train, calibration, held_out)
              for m, spec in recording.tasks.items()}
    weights = fit_ensembles(recording, links, calibration, 0)
    report = TrainReport(links, weights, profile_ensembles(
        recording, links, held_out, weights, 0, {m: p.held_out for m, p in priors.items()}),
        priors=priors)
    staging = tmp_path / "staging"
    for link in links:
        (staging / link.file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(in_force / link.file, staging / link.file)
    new = tmp_path / "new"
    write_bundle(recording, report, staging, new, {"seed": 0})
    assert not load_bundle(new).links_into(target)

    chosen = keep_in_force(report, {target}, in_force, new, recording, train, calibration,
                           held_out, 0, {"links_kept_in_force": [target]})
    bundle = load_bundle(new)  # whole: every file listed with its sha256
    assert bundle.manifest["links_kept_in_force"] == [target]
    assert {(e.source, e.target) for e in bundle.links} == {(e.source, e.target)
                                                            for e in old.links}
    for link in bundle.links_into(target):
        assert (new / link.file).read_bytes() == (in_force / link.file).read_bytes()
    sources = frozenset(link.source for link in bundle.links_into(target))
    assert bundle.profile.ensemble_agreement(target, sources) == chosen.profile.ensembles[
        target][sources]
    assert sorted(chosen.weights[target]) == sorted(sources)
