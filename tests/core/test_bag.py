"""Bag-of-tokens read-out (links_tflite.bag): which tokens a row holds, the order they
typically take, the decoding of a bag link's probabilities, and the manifest's checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from links_tflite.bag import BagDecoding, decode_bag, token_presence, typical_order
from links_tflite.bundle import BundleError, Profile, load_bundle, write_manifest
from links_tflite.tasks import TaskSpec


def test_presence_stops_at_the_first_pad_and_ignores_pad_and_bos() -> None:
    rows = np.array([[5, 3, 5, 0, 7], [1, 4, 0, 0, 0]], np.float32)
    presence = token_presence(rows, 8)
    assert presence[0].nonzero()[0].tolist() == [3, 5]  # 7 comes after the end
    assert presence[1].nonzero()[0].tolist() == [4]  # BOS is never a token


def test_typical_order_sorts_tokens_by_mean_relative_position() -> None:
    rows = np.array([[2, 9, 4, 0], [2, 4, 0, 0], [6, 2, 9, 4], [3, 0, 0, 0]], np.float32)
    # 2 is first or second, 9 in the middle, 4 last; 6 held by one row only
    assert typical_order(rows, 10, min_rows=2).tolist() == [2, 9, 4]
    assert 6 in typical_order(rows, 10).tolist()


def test_decode_emits_tokens_over_the_threshold_in_column_order() -> None:
    tokens = np.array([7, 3, 9])
    probabilities = np.array([[0.9, 0.2, 0.6], [0.1, 0.1, 0.1], [0.8, 0.9, 0.95]])
    out = decode_bag(probabilities, tokens, 0.5, max_len=2)
    assert out.tolist() == [[7, 9], [0, 0], [7, 3]]  # the last row cut at max_len


@pytest.mark.parametrize(("decoding", "problem"), [
    (BagDecoding((), 0.5), "at least one token"),
    (BagDecoding((2, 2), 0.5), "listed twice"),
    (BagDecoding((1, 5), 0.5), "ids must be in [2, 10)"),
    (BagDecoding((2, 10), 0.5), "ids must be in [2, 10)"),
    (BagDecoding((2, 3), 1.0), "threshold"),
])
def test_a_bad_read_out_is_named(decoding: BagDecoding, problem: str) -> None:
    assert problem in decoding.check(10)
    assert BagDecoding((2, 3), 0.4).check(10) == ""
    assert "3 logits for 2 tokens" in BagDecoding((2, 3), 0.4).check(10, width=3)


def bag_bundle(root: Path, link: dict) -> Path:
    (root / "links").mkdir(parents=True)
    (root / "links" / "a__b.tflite").write_bytes(b"a bag link")
    profile = Profile(pairwise={"a": {}, "b": {"a": 0.9}},
                      ensembles={"b": {frozenset({"a"}): 0.9}}, held_out_frames=10)
    (root / "profile.json").write_text(json.dumps(profile.to_dict()))
    write_manifest(root, {
        "models": {"a": {"task": TaskSpec("single_label", 2).to_dict()},
                   "b": {"task": TaskSpec("sequence", 0, vocab_size=10, max_len=4).to_dict()}},
        "links": [{"source": "a", "target": "b", "file": "links/a__b.tflite",
                   "architecture": "vec2bag", "quantization": "int8", **link}],
        "profile": "profile.json",
    })
    return root


def test_a_bag_link_loads_without_a_decoder(tmp_path: Path) -> None:
    bundle = load_bundle(bag_bundle(tmp_path / "b", {"output": "bag", "tokens": [4, 2],
                                                     "threshold": 0.3}))
    (link,) = bundle.links
    assert link.bag == BagDecoding((4, 2), 0.3) and not link.decoder


@pytest.mark.parametrize(("fields", "message"), [
    ({"output": "bag", "tokens": [4, 2]}, "missing or malformed field 'threshold'"),
    ({"output": "bag", "tokens": "42", "threshold": 0.3}, "tokens must be a list"),
    ({"output": "bag", "tokens": [4, 2.5], "threshold": 0.3}, "token ids must be integers"),
    ({"output": "bag", "tokens": [4, 12], "threshold": 0.3}, "ids must be in [2, 10)"),
    ({"output": "bag", "tokens": [4], "threshold": 0.3, "decoder": "links/a__b.tflite"},
     "a bag link has no decoder"),
    ({"output": "logits"}, "needs a decoder"),
])
def test_a_bad_bag_link_is_refused(tmp_path: Path, fields: dict, message: str) -> None:
    with pytest.raises(BundleError, match=r"links\[0\]") as refused:
        load_bundle(bag_bundle(tmp_path / "b", fields))
    assert message in str(refused.value)
