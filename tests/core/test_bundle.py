"""Bundle verification: a missing, extra or altered file, or a path outside the bundle, is
refused with a message that names the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from links_tflite.bundle import BundleError, Profile, load_bundle, write_manifest
from links_tflite.tasks import TaskSpec


def make_bundle(root: Path) -> Path:
    (root / "links").mkdir(parents=True)
    (root / "links" / "a__b.tflite").write_bytes(b"link bytes a->b")
    profile = Profile(pairwise={"a": {}, "b": {"a": 0.9}},
                      ensembles={"b": {frozenset({"a"}): 0.9}}, held_out_frames=10)
    (root / "profile.json").write_text(json.dumps(profile.to_dict()))
    write_manifest(root, {
        "models": {"a": {"task": TaskSpec("single_label", 2).to_dict()},
                   "b": {"task": TaskSpec("localization", 4).to_dict()}},
        "links": [{"source": "a", "target": "b", "file": "links/a__b.tflite",
                   "quantization": "int8"}],
        "profile": "profile.json",
    })
    return root


def test_loads_a_good_bundle(tmp_path: Path) -> None:
    bundle = load_bundle(make_bundle(tmp_path / "b"))
    assert set(bundle.models) == {"a", "b"}
    assert bundle.link("a", "b") is not None
    assert bundle.profile.link_agreement("a", "b") == pytest.approx(0.9)
    assert bundle.profile.ensemble_agreement("b", frozenset({"a"})) == pytest.approx(0.9)


def test_altered_file(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "b")
    (root / "links" / "a__b.tflite").write_bytes(b"tampered")
    with pytest.raises(BundleError, match=r"links/a__b.tflite: sha256 mismatch"):
        load_bundle(root)


def test_missing_file(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "b")
    (root / "links" / "a__b.tflite").unlink()
    with pytest.raises(BundleError, match=r"links/a__b.tflite: listed in the manifest but missing"):
        load_bundle(root)


def test_extra_file(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "b")
    (root / "links" / "evil.tflite").write_bytes(b"x")
    with pytest.raises(BundleError, match=r"not listed in the manifest: links/evil.tflite"):
        load_bundle(root)


@pytest.mark.parametrize("bad", ["../outside.tflite", "/etc/passwd", "links/../../x"])
def test_paths_outside_the_bundle(tmp_path: Path, bad: str) -> None:
    root = make_bundle(tmp_path / "b")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["files"][bad] = "0" * 64
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"inside the bundle|leaves the bundle"):
        load_bundle(root)


def test_unknown_link_model_and_bad_json(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "b")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["links"][0]["target"] = "zzz"
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"links\[0\].target: unknown model 'zzz'"):
        load_bundle(root)
    (root / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(root)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nope")


def test_real_bundle_verifies(digits_build, tmp_path: Path) -> None:
    bundle = load_bundle(digits_build.bundle)
    assert {link.quantization for link in bundle.links} == {"int8"}
    copy = tmp_path / "copy"
    shutil.copytree(digits_build.bundle, copy)
    target = copy / bundle.links[0].file
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 mismatch"):
        load_bundle(copy)


def test_a_written_bundle_is_readable_by_other_users(tmp_path: Path) -> None:
    """A service user other than the bundle's writer (DynamicUser=) reads it after `cp -r`,
    even when it was staged in a 0700 mkdtemp folder."""
    root = tmp_path / "staged"
    root.mkdir(mode=0o700)
    make_bundle(root)
    assert root.stat().st_mode & 0o777 == 0o755
    assert (root / "links").stat().st_mode & 0o777 == 0o755
    for path in [root / "manifest.json", root / "profile.json", root / "links" / "a__b.tflite"]:
        assert path.stat().st_mode & 0o777 == 0o644, path


def test_a_profile_carries_reuse_curves_bounded() -> None:
    base = {"pairwise": {}, "ensembles": {}}
    profile = Profile.from_dict({**base, "reuse": {"a": [0.9, 0.8]}})
    assert profile.reuse == {"a": (0.9, 0.8)}
    assert Profile.from_dict(profile.to_dict()).reuse == profile.reuse
    assert Profile.from_dict(base).reuse == {}  # bundles trained before them
    for bad in ([1.5], [float("nan")], [0.5] * 65, "x"):
        with pytest.raises(BundleError, match="malformed profile"):
            Profile.from_dict({**base, "reuse": {"a": bad}})
