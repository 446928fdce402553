"""The cheap path into a large-vocabulary sequence target (offline_trainer.bag_links): on a
synthetic recording generated here, links into a 2,000-token caption are bag links, the
decoder is never trained, they beat the caption's prior, and the bundle runs them through
links_tflite with TensorFlow made unimportable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from links_tflite.bag import token_presence
from offline_trainer.bag_links import ordered_oracle_scores
from tests.support.synthetic import large_vocabulary_recording

ROOT = Path(__file__).resolve().parents[2]
RUN_WITHOUT_TENSORFLOW = """
import json, sys
import numpy as np
import tests.support.agent_without_tensorflow as guard
sys.meta_path.insert(0, guard.RefuseTensorFlow())
from links_tflite.agreement import mean_agreement
from links_tflite.bundle import load_bundle
from links_tflite.ensemble import EnsemblePredictor
from links_tflite.recording import Recording
bundle, recording = load_bundle(sys.argv[1]), Recording.load(sys.argv[2])
predictor = EnsemblePredictor(bundle)
figures = {}
for source in ("scene", "keywords"):
    predictor.prepare({source}, ["caption"])
    rows = range(0, len(recording), 5)
    predicted = np.stack([predictor.predict("caption", {source: recording.outputs[source][i]})
                          .value for i in rows])
    figures[source] = mean_agreement(bundle.models["caption"], predicted,
                                     recording.outputs["caption"][list(rows)])
leaked = [m for m in sys.modules if m.split(".")[0] in guard.FORBIDDEN]
print(json.dumps({"agreement": figures, "leaked": leaked}))
"""


@pytest.mark.trainer
def test_a_large_vocabulary_target_takes_the_cheap_path(tmp_path: Path) -> None:
    from links_tflite.bundle import load_bundle
    from offline_trainer.links import LinkTraining
    from offline_trainer.train_links import train_bundle_report

    recording = large_vocabulary_recording()
    saved = recording.save(tmp_path / "rec.npz")
    # the links into the two sequence targets, what is asserted (those into scene are not)
    report = train_bundle_report(saved, tmp_path / "bundle", 0.7, LinkTraining(epochs=40),
                                 targets=("caption", "keywords"))
    bundle = load_bundle(tmp_path / "bundle")
    into = {link.source: link for link in bundle.links_into("caption")}
    assert set(into) == {"scene", "keywords"}
    assert into["scene"].architecture == "vec2bag"
    assert into["keywords"].architecture == "seq2bag"  # it copies the keywords' tokens
    prior = bundle.profile.priors["caption"]
    for source, link in into.items():
        assert link.bag is not None and not link.decoder and link.quantization == "int8"
        entry = next(e for e in bundle.manifest["links"]
                     if (e["source"], e["target"]) == (source, "caption"))
        assert "decoder not trained" in entry["choice"]
        # held out, through the int8 file: far above the constant caption
        assert bundle.profile.pairwise["caption"][source] > prior + 0.3, (source, prior)
    assert not list((tmp_path / "bundle" / "links").glob("*.decoder.tflite"))
    assert all(r.bag is not None for r in report.links if r.target in ("caption", "keywords"))

    run = subprocess.run([sys.executable, "-c", RUN_WITHOUT_TENSORFLOW,
                          str(tmp_path / "bundle"), str(saved)],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr
    served = json.loads(run.stdout)
    assert served["leaked"] == []
    assert min(served["agreement"].values()) > prior + 0.3, served


def test_the_ordered_oracle_counts_only_missing_and_extra_tokens() -> None:
    predicted = np.array([[4, 3, 0, 0], [9, 0, 0, 0], [0, 0, 0, 0]], np.float32)
    exact = np.array([[3, 4, 4, 0], [3, 4, 0, 0], [0, 0, 0, 0]], np.float32)
    # row 0: the right tokens in the wrong order (and one repeat): a decoder could order them
    assert ordered_oracle_scores(predicted, exact).tolist() == [1.0, 0.0, 1.0]
    assert token_presence(predicted, 10)[0].nonzero()[0].tolist() == [3, 4]
