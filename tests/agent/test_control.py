"""Remote config and bundle unpacking without a broker: patches are validated by the strict
config model with errors by request path, persisted, and re-applied at start; archives can
never write outside the staging folder."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from agent.config import ConfigError, load_config
from agent.control import (
    RequestError,
    StateStore,
    apply_patch,
    changed_paths,
    settable_view,
    unpack_bundle,
)
from links_tflite.bundle import BundleError
from tests.agent.test_config import GOOD

TWO_MODELS = GOOD + '[[models]]\nid = "parity"\npath = "models/parity.tflite"\ninput = "image"\n'


@pytest.fixture()
def config(tmp_path: Path):
    path = tmp_path / "agent.toml"
    path.write_text(TWO_MODELS)
    return load_config(path)


def test_patch_merges_and_reports_what_changed(config) -> None:
    new = apply_patch(config, {"budget": {"memory_mb": None, "delay_ms": 2},
                               "models": {"parity": {"enabled": False}},
                               "publish": {"decoded": False}})
    assert new.budget.memory_mb is None and new.budget.delay_ms == 2.0
    assert [m.id for m in new.enabled_models] == ["digit"]
    assert changed_paths(config, new) == ["budget.delay_ms", "budget.memory_mb",
                                          "models.parity.enabled", "publish.decoded"]
    assert new.models[0].path == config.models[0].path  # paths untouched
    assert settable_view(new)["models"] == {"digit": {"enabled": True},
                                            "parity": {"enabled": False}}


@pytest.mark.parametrize(
    ("patch", "paths"),
    [
        ({"budget": {"memory_mb": "3"}}, {"budget.memory_mb"}),
        ({"budget": {"memory_mb": -2, "bogus": 1}}, {"budget.memory_mb", "budget.bogus"}),
        ({"models": {"parity": {"enabled": "yes"}}}, {"models.parity.enabled"}),
        ({"models": {"digit": {"path": "/etc/shadow"}}}, {"models.digit.path"}),
        ({"models": {"../x": {"enabled": True}}}, {"models.../x"}),
        ({"models": {"digit": {"enabled": False}, "parity": {"enabled": False}}}, {""}),
        ({"bundle": {"path": "/tmp/evil"}, "source": {}, "device_id": "x"},
         {"bundle", "source", "device_id"}),
        ({"selection": {"policy": "greedy"}}, {"selection.policy"}),
        ({"publish": {"models": ["nope"]}}, {""}),
        ({"selection": "all"}, {"selection"}),
    ],
)
def test_bad_patches_name_every_path_and_change_nothing(config, patch, paths) -> None:
    before = config.model_dump()
    with pytest.raises(RequestError) as caught:
        apply_patch(config, patch)
    assert {p for p, _ in caught.value.errors} == paths, caught.value.errors
    assert config.model_dump() == before


def test_state_store_persists_and_reapplies(config, tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    assert store.version == 0 and store.effective(config) == config
    store.save(5, "t5", {"selection": {"policy": "all"}, "models": {"parity": {"enabled": False}}})
    again = StateStore(tmp_path / "state")
    assert (again.version, again.transaction) == (5, "t5")
    effective = again.effective(config)
    assert effective.selection.policy == "all" and len(effective.enabled_models) == 1
    # overrides that no longer fit the file (a model removed) fall back to the file's values
    again.save(6, "t6", {"models": {"gone": {"enabled": True}}})
    assert StateStore(tmp_path / "state").effective(config) == config


def test_state_dir_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(GOOD)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    assert load_config(path).state.dir == tmp_path / "state"
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "sd"))
    assert load_config(path).state.dir == tmp_path / "sd"
    path.write_text(GOOD + '[state]\ndir = "mine"\n')
    assert load_config(path).state.dir == tmp_path / "mine"


def test_broker_password_from_a_credential(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(GOOD.replace("port = 1884", 'port = 1884\nusername = "u"\n'
                                 'password_credential = "mqtt-password"'))
    config = load_config(path)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY"):
        config.mqtt.password()
    (tmp_path / "mqtt-password").write_text("s3cret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert config.mqtt.password() == "s3cret"
    assert "s3cret" not in config.model_dump_json()


def _tar(members: list[tarfile.TarInfo], data: bytes = b"x") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for member in members:
            if member.isreg():
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
            else:
                tar.addfile(member)
    return buffer.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([_member("/etc/cron.d/x")], "must be relative"),
        ([_member("b/../../x")], "must be relative"),
        ([_member("manifest.json", tarfile.SYMTYPE, "/etc/passwd")], "only regular files"),
        ([_member("manifest.json", tarfile.LNKTYPE, "x")], "only regular files"),
        ([_member("dev", tarfile.CHRTYPE)], "only regular files"),
        ([_member("a/x"), _member("b/y")], "no manifest.json"),
    ],
)
def test_hostile_archives_are_refused(tmp_path: Path, members, message: str) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(BundleError, match=message):
        unpack_bundle(_tar(members), staging, 1 << 20)
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and staging not in p.parents]
    assert outside == []


def test_archive_size_and_layout(tmp_path: Path) -> None:
    staging = tmp_path / "s1"
    staging.mkdir()
    with pytest.raises(BundleError, match="more than 10 bytes"):
        unpack_bundle(_tar([_member("manifest.json")], b"x" * 11), staging, 10)
    staging = tmp_path / "s2"
    staging.mkdir()
    root = unpack_bundle(_tar([_member("top/manifest.json"), _member("top/links/a")]),
                         staging, 1 << 20)
    assert root == staging / "top" and (root / "links" / "a").read_bytes() == b"x"
    with pytest.raises(BundleError, match="not a tar"):
        unpack_bundle(b"not an archive at all", staging, 1 << 20)


def test_schemas_are_valid_and_their_examples_match() -> None:
    import json

    from tests.support.contract import SCHEMAS, validate

    names = sorted(p.stem for p in SCHEMAS.glob("*.json"))
    assert {"output", "status", "config-set", "config-response", "config-state", "command",
            "command-response", "availability"} <= set(names)
    for name in names:
        for example in json.loads((SCHEMAS / f"{name}.json").read_text()).get("examples", []):
            validate(name, example)


def _gz(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize(("archive", "message"), [
    (_gz([("manifest.json", b"{}"), *[(f"f{i}", b"") for i in range(5000)]]),
     "more than 4096 members"),
    (_gz([("manifest.json", b"{}"), ("zeros", bytes(3 << 20))]), "times its size"),
    (_gz([("manifest.json", b"{}"), ("big", bytes(200))]), "more than 100 bytes"),
    (_gz([("manifest.json", b"{}"), ("ok", b"x"), ("../../evil", b"x")]), "relative"),
    (_gz([("manifest.json", b"{}"), ("data", bytes(range(256)) * 400)])[:600], "tar archive"),
])
def test_archives_are_checked_member_by_member_before_anything_is_written(
        tmp_path: Path, archive: bytes, message: str) -> None:
    """A bomb (many members, a huge expansion) or one bad member late in the archive: refused
    with nothing written, not even the members before it."""
    staging = tmp_path / "staging"
    staging.mkdir()
    limit = 100 if message == "more than 100 bytes" else 1 << 30
    with pytest.raises(BundleError, match=message):
        unpack_bundle(archive, staging, limit)
    assert list(tmp_path.rglob("*")) == [staging], "something was written before the refusal"


def test_forget_drops_the_remote_settings_and_says_so_at_every_load(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A remote setting overrides the file until cmd/forget: every load logs which paths it
    covers; forget puts the file's values back under a new version and clears the store."""
    import json
    import logging

    from agent.control import Control
    from tests.agent.test_fuzz_control import TOPICS, Rig

    rig = Rig(tmp_path)
    config_file = tmp_path / "agent.toml"
    rig.control = Control(rig.agent, rig.publisher, rig.store, config_file)  # type: ignore[arg-type]
    set_ = rig.send(TOPICS.config_set, json.dumps({
        "transaction": "t1", "version": 1, "selection": {"policy": "all"},
        "budget": {"memory_mb": 1.0}}).encode())
    assert set_["status"] == "ok", set_
    with caplog.at_level(logging.WARNING, logger="agent.control"):  # as at the next start
        StateStore(rig.state).effective(load_config(config_file))
    assert "overrides the config file at budget.memory_mb, selection.policy" in caplog.text
    reply = rig.send(TOPICS.command("forget"), b'{"transaction": "f1"}')
    assert reply["status"] == "ok", reply
    assert reply["result"] == {"dropped": ["budget.memory_mb", "selection.policy"],
                               "changed": ["budget.memory_mb", "selection.policy"],
                               "version": 2}
    file_config = load_config(config_file)
    assert rig.agent.config.selection.policy == file_config.selection.policy
    assert rig.agent.config.budget == file_config.budget
    assert StateStore(rig.state).overrides == {} and StateStore(rig.state).version == 2
    assert rig.publisher.retained[TOPICS.config_state]["version"] == 2
    again = rig.send(TOPICS.command("forget"), b"{}")
    assert again["result"] == {"dropped": [], "changed": [], "version": 2}
