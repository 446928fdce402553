"""`config/set` versions (agent/control/settings.py), in process: without `version` a change
applies as the next version; with one it must be above the version in force; the reply and
`config/state` say which version is in force; a refusal changes nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent.security import Verifier, sign
from tests.agent.test_fuzz_control import TOPICS, Rig, _check
from tests.support.contract import validate


def _set(rig: Rig, request: dict[str, Any], expect_error: bool = False) -> dict[str, Any]:
    reply = _check(rig, TOPICS.config_set, json.dumps(request).encode(), expect_error)
    validate("config-response", reply)
    return reply


def _in_force(rig: Rig) -> tuple[int, int, int, int]:
    """The version in force as control, the agent's status, the store and config/state see it."""
    return (rig.control.version, rig.agent.config_version, rig.store.version,
            rig.publisher.retained[TOPICS.config_state]["version"])


def test_without_a_version_a_change_applies_as_the_next_version(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    first = _set(rig, {"transaction": "hand-1", "budget": {"memory_mb": 2.5}})
    assert (first["status"], first["version"], first["applied"]) == \
        ("ok", 1, ["budget.memory_mb"])
    assert rig.agent.config.budget.memory_mb == 2.5
    assert _in_force(rig) == (1, 1, 1, 1)
    assert rig.agent.statuses == [("running", 1)]
    second = _set(rig, {"selection": {"policy": "all"}})  # no transaction either
    assert (second["status"], second["version"], second["transaction"]) == ("ok", 2, None)
    assert _in_force(rig) == (2, 2, 2, 2)
    validate("config-state", rig.publisher.retained[TOPICS.config_state])


def test_a_given_version_must_be_above_the_one_in_force(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    assert _set(rig, {"transaction": "a", "version": 5, "budget": {"memory_mb": 2.0}}
                )["version"] == 5
    stale = _set(rig, {"transaction": "b", "version": 5, "budget": {"memory_mb": 3.0}},
                 expect_error=True)
    assert [e["path"] for e in stale["errors"]] == ["version"]
    assert "stale" in stale["errors"][0]["message"] and stale["version"] == 5
    assert rig.agent.config.budget.memory_mb == 2.0 and _in_force(rig) == (5, 5, 5, 5)
    # a versionless change follows the one in force, and a versioned one still may jump
    assert _set(rig, {"budget": {"memory_mb": 3.0}})["version"] == 6
    assert _set(rig, {"version": 40, "budget": {"memory_mb": 4.0}})["version"] == 40
    assert _in_force(rig) == (40, 40, 40, 40)


def test_a_versionless_request_delivered_twice_is_applied_once(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    request = {"transaction": "twice", "publish": {"decoded": False}}
    assert _set(rig, request)["version"] == 1
    again = _set(rig, request)
    assert (again["status"], again["version"], again["applied"]) == ("ok", 1, [])
    assert rig.agent.statuses == [("running", 1)], "nothing re-applied, nothing announced"
    # the same transaction with another change is a change: the next version
    changed = _set(rig, {"transaction": "twice", "publish": {"decoded": True}})
    assert (changed["version"], changed["applied"]) == (2, ["publish.decoded"])


def test_a_refused_versionless_request_changes_nothing(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    _set(rig, {"transaction": "ok", "budget": {"memory_mb": 2.0}})
    refused = _set(rig, {"transaction": "bad", "budget": {"memory_mb": -1}},
                   expect_error=True)
    assert refused["version"] == 1 and [e["path"] for e in refused["errors"]] == \
        ["budget.memory_mb"]
    nothing = _set(rig, {"transaction": "empty"}, expect_error=True)
    assert nothing["errors"] == [{"path": "", "message": "nothing to set"}]
    assert _in_force(rig) == (1, 1, 1, 1)


def test_versions_continue_above_the_floor_after_a_reset(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    _set(rig, {"version": 9, "budget": {"memory_mb": 2.0}})
    rig.store.config_file.unlink()  # the documented reset; version-floor.json stays
    again = Rig(tmp_path)
    assert again.control.version == 9
    assert _set(again, {"budget": {"memory_mb": 3.0}})["version"] == 10


def test_a_signed_request_must_carry_its_version(tmp_path: Path) -> None:
    """A signed config/set is protected from replay by its version: without one it could be
    replayed as the next version forever, so it is refused."""
    key = b"the box's own key, 32 bytes long"
    rig = Rig(tmp_path)
    rig.control.verifier = Verifier(key, required=True)
    request = {"transaction": "s1", "budget": {"memory_mb": 2.0}}
    refused = _check(rig, TOPICS.config_set, sign(key, TOPICS.config_set, request), True)
    assert [e["path"] for e in refused["errors"]] == ["version"]
    assert refused["transaction"] == "s1"
    signed = sign(key, TOPICS.config_set, {**request, "version": 1})
    assert _check(rig, TOPICS.config_set, signed)["version"] == 1
    replayed = _check(rig, TOPICS.config_set, sign(key, TOPICS.config_set,
                                                   {**request, "transaction": "s2",
                                                    "version": 1}), True)
    assert "stale" in replayed["errors"][0]["message"]
