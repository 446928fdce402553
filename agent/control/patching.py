"""What a remote request may change in the config, and how a patch is put onto it: pure
functions of the config in force (no agent, no files).

A patch holds the remotely settable part of the config: `budget`, `selection`, `profiling`,
`publish` and `models.<id>.enabled`. It is merged onto the config in force (objects key by
key, anything else replaces) and validated by the same strict model as the TOML file
(agent/config.py, JSON types strictly: a number in a string is an error); every problem is
named by its path in the request. Nothing remote can name a file, a path or code."""

from __future__ import annotations

import copy
import json
from typing import Any

from pydantic import ValidationError

from agent.config import AgentConfig
from agent.errors import Errors, RequestError

SETTABLE_SECTIONS = ("budget", "selection", "profiling", "publish")


def merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: objects merge key by key, anything else (null included) replaces."""
    merged = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def settable_view(config: AgentConfig) -> dict[str, Any]:
    """The part of the config a remote request may change, as JSON."""
    data = config.model_dump(mode="json")
    view = {section: data[section] for section in SETTABLE_SECTIONS if section in data}
    view["models"] = {m.id: {"enabled": m.enabled} for m in config.models}
    return view


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: a nested object's leaves by their dotted paths."""
    if isinstance(data, dict) and data:
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): data}


def changed_paths(old: AgentConfig, new: AgentConfig) -> list[str]:
    before, after = flatten(settable_view(old)), flatten(settable_view(new))
    return sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))


def apply_patch(config: AgentConfig, patch: Any) -> AgentConfig:
    """The config in force with `patch` applied, validated; RequestError names each problem
    by its path in the request (all of them, not only the first)."""
    if not isinstance(patch, dict):
        raise RequestError([("", "expected a JSON object")])
    data = config.model_dump(mode="json")
    index = {m.id: i for i, m in enumerate(config.models)}
    errors: Errors = []
    for key, value in patch.items():
        if key == "models":
            if not isinstance(value, dict):
                errors.append(("models", "expected an object {model_id: {\"enabled\": bool}}"))
                continue
            for model_id, change in value.items():
                where = f"models.{model_id}"
                if model_id not in index:
                    errors.append((where, f"no configured model {model_id!r} "
                                          f"(configured: {', '.join(index)})"))
                elif not isinstance(change, dict):
                    errors.append((where, "expected an object {\"enabled\": bool}"))
                else:
                    errors += [(f"{where}.{field}", "cannot be set remotely (only 'enabled')")
                               for field in change if field != "enabled"]
                    if "enabled" in change:
                        data["models"][index[model_id]]["enabled"] = change["enabled"]
        elif key in SETTABLE_SECTIONS and key in data:
            if not isinstance(value, dict):
                errors.append((key, "expected an object"))
            else:
                data[key] = merge(data[key], value)
        else:
            errors.append((key, "cannot be set remotely (settable: "
                                f"{', '.join(SETTABLE_SECTIONS)}, models.<id>.enabled)"))
    try:
        new = AgentConfig.model_validate_json(json.dumps(data), strict=True)
    except ValidationError as exc:
        ids = [m.id for m in config.models]
        errors += [(_request_path(e["loc"], ids), e["msg"]) for e in exc.errors()]
    if errors:
        raise RequestError(errors)
    return new


def settable_from(current: AgentConfig, source: AgentConfig) -> AgentConfig:
    """`current` with the settable part of `source` (its models that `current` has): what a
    reload of the config file, or forgetting the remote settings, puts in force."""
    patch = settable_view(source)
    patch["models"] = {k: v for k, v in patch["models"].items()
                       if k in {m.id for m in current.models}}
    return apply_patch(current, patch)


def restart_only_changes(fresh: AgentConfig, current: AgentConfig) -> list[str]:
    """The parts of a re-read config file that differ from those in force and need a
    restart (everything but the settable part)."""
    ignored = [k for k in ("device_id", "mqtt", "bundle", "source", "sources", "state",
                           "control", "fleet")
               if getattr(fresh, k) != getattr(current, k)]
    shape = [m.model_copy(update={"enabled": True}) for m in fresh.models]
    if shape != [m.model_copy(update={"enabled": True}) for m in current.models]:
        ignored.append("models (other than enabled)")
    return ignored


def _request_path(loc: tuple[Any, ...], model_ids: list[str]) -> str:
    """`models.2.enabled` in the config is `models.<id>.enabled` in a request."""
    parts = [str(p) for p in loc]
    if len(parts) >= 2 and parts[0] == "models" and parts[1].isdigit():
        number = int(parts[1])
        if number < len(model_ids):
            parts[1] = model_ids[number]
    return ".".join(parts)
