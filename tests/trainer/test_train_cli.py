"""`mlink-train links`: bad recordings are refused with a clear message, the train fraction
is a parameter, and a recording with a sequence model becomes a bundle whose sequence link
decodes through the agent's EnsemblePredictor."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from agent.costs import CostStats
from agent.scheduler import measure_link
from links_tflite.agreement import mean_agreement
from links_tflite.bundle import load_bundle
from links_tflite.ensemble import EnsemblePredictor
from offline_trainer.cli import main
from tests.support.synthetic import make_recording

pytestmark = pytest.mark.trainer


def write_raw(path: Path, change: str) -> Path:
    """A recording file damaged in one way, written by hand (Recording.save would refuse)."""
    recording = make_recording(n=40, models=("digit", "spelled"))
    meta = {"format": "mlink-recording", "format_version": 1, "workload": "bad",
            "models": {m: {"task": t.to_dict()} for m, t in recording.tasks.items()},
            "modalities": [], "costs": {}}
    arrays = {"frame_ids": recording.frame_ids, "ts": recording.ts,
              **{f"outputs/{m}": v for m, v in recording.outputs.items()}}
    if change == "missing model":
        del arrays["outputs/spelled"]
    elif change == "misaligned":
        arrays["outputs/digit"] = arrays["outputs/digit"][:-3]
    elif change == "nan":
        arrays["outputs/digit"] = arrays["outputs/digit"].copy()
        arrays["outputs/digit"][7, 2] = np.nan
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(("change", "message"), [
    ("missing model", r"outputs/spelled: missing"),
    ("misaligned", r"outputs/digit: shape \(37, 10\), expected \(40, 10\)"),
    ("nan", r"outputs/digit: NaN or infinite value at row 7"),
])
def test_bad_recordings_are_refused_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            change: str, message: str) -> None:
    path = write_raw(tmp_path / "bad.npz", change)
    assert main(["links", str(path), "--out", str(tmp_path / "bundle")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlink-train: ") and str(path) in err
    assert re.search(message, err), err
    assert not (tmp_path / "bundle").exists()


def test_bad_train_fraction_and_missing_file(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = make_recording(n=40, models=("digit", "parity")).save(tmp_path / "rec.npz")
    assert main(["links", str(path), "--out", str(tmp_path / "b"), "--train-fraction", "1.5"]) == 2
    assert "--train-fraction must be in (0, 1), got 1.5" in capsys.readouterr().err
    assert main(["links", str(tmp_path / "none.npz"), "--out", str(tmp_path / "b")]) == 2
    assert "recording not found" in capsys.readouterr().err


def test_sequence_recording_to_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recording = make_recording(n=160, models=("digit", "spelled"))
    path = recording.save(tmp_path / "rec.npz")
    out = tmp_path / "bundle"
    assert main(["links", str(path), "--out", str(out), "--train-fraction", "0.6",
                 "--epochs", "30"]) == 0
    printed = capsys.readouterr().out
    assert "digit->spelled" in printed and "vec2seq" in printed and "seq2vec" in printed
    assert "bundle written to" in printed

    bundle = load_bundle(out)
    assert bundle.manifest["train_fraction"] == 0.6
    assert bundle.manifest["train_frames"] == 96 and bundle.profile.held_out_frames == 64
    link = bundle.link("digit", "spelled")
    assert link is not None and link.architecture == "vec2seq" and link.decoder
    assert link.decoder in bundle.manifest["files"] and link.file in bundle.manifest["files"]
    assert bundle.models["spelled"].labels[:2] == ("<pad>", "<bos>")  # the vocabulary ships

    predictor = EnsemblePredictor(bundle)
    predictor.prepare({"digit"}, ["spelled"])
    rows = range(100, 160)
    predicted = np.stack([
        predictor.predict("spelled", {"digit": recording.outputs["digit"][i]}).value for i in rows
    ])
    assert predicted.shape == (60, recording.tasks["spelled"].max_len)
    assert mean_agreement(recording.tasks["spelled"], predicted,
                          recording.outputs["spelled"][100:160]) >= 0.9

    # the agent measures a sequence link's cost through the same runner (encoder, decoder
    # step and the greedy loop), not as a single-file link
    stats = CostStats(warmup=2)
    measure_link(bundle, link, recording.outputs["digit"][0], stats, runs=5)
    assert stats.cost().delay_ms > 0


def test_links_on_some_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--models` links a subset of the recording's models; an unknown one is refused by name."""
    path = make_recording(n=60).save(tmp_path / "rec.npz")
    out = tmp_path / "bundle"
    assert main(["links", str(path), "--out", str(out), "--models", "digit,parity",
                 "--epochs", "2"]) == 0
    assert set(load_bundle(out).models) == {"digit", "parity"}
    assert main(["links", str(path), "--out", str(tmp_path / "b2"),
                 "--models", "digit,roman"]) == 2
    err = capsys.readouterr().err
    assert "models ['roman'] are not in the recording" in err
    assert not (tmp_path / "b2").exists()
