"""The bundle's ensemble and sequence-link fields: checked on load, and skeleton bundles
(no learned weights) still load and predict with their agreement weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from links_tflite.bundle import BundleError, load_bundle, write_manifest
from links_tflite.ensemble import LEARNED, EnsemblePredictor
from tests.core.test_bundle import make_bundle


def rewrite(root: Path, change: dict) -> Path:
    manifest = json.loads((root / "manifest.json").read_text())
    manifest.pop("files")
    manifest.update(change)
    for key in ("format", "format_version"):
        manifest.pop(key)
    write_manifest(root, manifest)
    return root


def test_min_share_loads_and_is_checked(tmp_path: Path) -> None:
    entry = {"target": "b", "method": LEARNED, "pooling": "mean", "sources": ["a"],
             "weights": {"a": 1.0}}
    old = load_bundle(rewrite(make_bundle(tmp_path / "old"), {"ensembles": [entry]}))
    assert EnsemblePredictor(old).min_share("b") == 0.0  # bundles from before it read all
    root = rewrite(make_bundle(tmp_path / "b"), {"ensembles": [{**entry, "min_share": 0.01}]})
    assert EnsemblePredictor(load_bundle(root)).min_share("b") == 0.01
    rewrite(root, {"ensembles": [{**entry, "min_share": 0.5}]})
    with pytest.raises(BundleError, match=r"ensembles\[0\]\.min_share: must be in \[0, 0.05\]"):
        load_bundle(root)


def test_skeleton_bundle_uses_agreement_weights(tmp_path: Path) -> None:
    bundle = load_bundle(make_bundle(tmp_path / "b"))
    assert bundle.ensembles == {}
    weights, pooling = EnsemblePredictor(bundle).weights("b")
    assert weights == {"a": pytest.approx(0.9)} and pooling == "mean"


def test_learned_weights_load(tmp_path: Path) -> None:
    root = rewrite(make_bundle(tmp_path / "b"), {"ensembles": [
        {"target": "b", "method": LEARNED, "pooling": "mean", "sources": ["a"],
         "weights": {"a": 1.0}}]})
    bundle = load_bundle(root)
    assert bundle.ensembles["b"].weights == {"a": 1.0}
    assert EnsemblePredictor(bundle).weights("b") == ({"a": 1.0}, "mean")


@pytest.mark.parametrize(("ensemble", "message"), [
    ({"target": "zzz", "method": LEARNED}, r"ensembles\[0\].target: unknown model 'zzz'"),
    ({"target": "b", "method": LEARNED, "weights": {"a": -1}}, r"finite and >= 0"),
    ({"target": "b", "method": LEARNED, "weights": {"a": "x"}}, r"malformed"),
    ({"target": "b", "method": LEARNED, "pooling": "vote"}, r"pooling: 'vote' is not one of"),
    ({"method": LEARNED}, r"ensembles\[0\]: missing or malformed field 'target'"),
])
def test_bad_ensembles_are_refused(tmp_path: Path, ensemble: dict, message: str) -> None:
    root = rewrite(make_bundle(tmp_path / "b"), {"ensembles": [ensemble]})
    with pytest.raises(BundleError, match=message):
        load_bundle(root)


def test_sequence_target_needs_a_listed_decoder(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "b")
    manifest = json.loads((root / "manifest.json").read_text())
    models = {**manifest["models"], "s": {"task": {
        "kind": "sequence", "dim": 0, "vocab_size": 5, "max_len": 3}}}
    link = {"source": "a", "target": "s", "file": "links/a__b.tflite", "quantization": "int8"}
    rewrite(root, {"models": models, "links": [*manifest["links"], link]})
    with pytest.raises(BundleError, match=r"links\[1\]: a link into a sequence target needs"):
        load_bundle(root)
    link["decoder"] = "links/a__s.decoder.tflite"
    rewrite(root, {"models": models, "links": [*manifest["links"], link]})
    with pytest.raises(BundleError, match=r"a__s.decoder.tflite' is not listed"):
        load_bundle(root)


def test_priors_load_and_are_served(tmp_path: Path) -> None:
    root = rewrite(make_bundle(tmp_path / "b"), {"priors": {
        "a": {"output": [0.3, 0.7]}, "b": {"output": [0.1, 0.1, 0.5, 0.5]}}})
    bundle = load_bundle(root)
    assert bundle.priors["a"].bounds is None
    served = EnsemblePredictor(bundle).prior("a")
    assert served.value.tolist() == pytest.approx([0.3, 0.7]) and served.sources == ()
    assert EnsemblePredictor(load_bundle(make_bundle(tmp_path / "old"))).bundle.priors == {}
    with pytest.raises(LookupError, match="no prior for 'a'"):
        EnsemblePredictor(load_bundle(tmp_path / "old")).prior("a")


@pytest.mark.parametrize(("priors", "message"), [
    ({"zzz": {"output": [1.0]}}, r"priors.zzz: unknown model 'zzz'"),
    ({"a": {"output": [1.0]}}, r"priors.a.output: expected a list of 2 numbers"),
    ({"a": [0.5, 0.5]}, r"priors.a: expected an object with an 'output'"),
    ({"a": {"output": [0.5, "x"]}}, r"priors.a.output: expected numbers"),
    ({"a": {"output": [0.5, float("nan")]}}, r"priors.a.output: numbers must be finite"),
    ({"a": {"output": [0.5, 0.5], "low": [0.0], "high": [1.0]}},
     r"priors.a: only a regression target has a range"),
    ([1], r"priors: expected an object by model"),
])
def test_bad_priors_are_refused(tmp_path: Path, priors: object, message: str) -> None:
    root = rewrite(make_bundle(tmp_path / "b"), {"priors": priors})
    with pytest.raises(BundleError, match=message):
        load_bundle(root)


def test_a_regression_range_is_checked_and_clamps_links(tmp_path: Path) -> None:
    from links_tflite.tasks import TaskSpec

    root = make_bundle(tmp_path / "b")
    manifest = json.loads((root / "manifest.json").read_text())
    models = {**manifest["models"], "n": {"task": TaskSpec("regression", 2).to_dict()}}
    rewrite(root, {"models": models, "priors": {
        "n": {"output": [1.0, 2.0], "low": [0.0, 1.0], "high": [3.0, 0.5]}}})
    with pytest.raises(BundleError, match=r"priors.n: low must not exceed high"):
        load_bundle(root)
    rewrite(root, {"models": models, "priors": {
        "n": {"output": [1.0, 2.0], "low": [0.0, 1.0], "high": [3.0, 4.0]}}})
    bounds = load_bundle(root).priors["n"].bounds
    assert bounds is not None and bounds[1].tolist() == [3.0, 4.0]
