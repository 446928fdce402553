"""What `mlink-agent validate-config` checks beyond the config's own schema, without running
the loop: every file the config names exists and is readable, the bundle loads and links the
configured models with their tasks, the source opens, the state dir is usable, the secrets are
readable. Each problem is one (path, message) pair, as the config's own errors are."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from agent.config import AgentConfig, ConfigError
from agent.scheduler import check_models_in_bundle
from agent.sources import SOURCES, open_source
from links_tflite.bundle import BundleError, load_bundle
from links_tflite.recording import RecordingError

Problems = list[tuple[str, str]]


def _readable_file(path: Path, where: str, what: str) -> Problems:
    if not path.exists():
        return [(where, f"{what} not found: {path}")]
    if not path.is_file():
        return [(where, f"{what} is not a file: {path}")]
    if not os.access(path, os.R_OK):
        return [(where, f"{what} is not readable by this user: {path}")]
    return []


def check_models(config: AgentConfig) -> Problems:
    problems: Problems = []
    for i, model in enumerate(config.models):
        if not model.enabled:
            continue
        if model.path is not None and model.required:  # `required = false`: may come later
            problems += _readable_file(model.path, f"models.{i}.path", f"model file of "
                                                                        f"{model.id!r}")
        if model.entry is not None:
            module = model.entry.split(":", 1)[0]
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                problems.append((f"models.{i}.entry", f"module {module!r} of {model.id!r} is not "
                                                      f"importable here"))
    return problems


def check_bundle(config: AgentConfig) -> Problems:
    try:
        bundle = load_bundle(config.bundle.path)
    except BundleError as exc:
        return [("bundle.path", str(exc))]
    except OSError as exc:
        return [("bundle.path", f"cannot read the bundle at {config.bundle.path}: "
                                f"{exc.strerror or exc}")]
    try:
        check_models_in_bundle(config, bundle)
    except ConfigError as exc:
        return list(exc.errors)
    return []


def check_source(config: AgentConfig) -> Problems:
    """Each source opened, then closed at once (a live stream's reader thread, a device)."""
    paths = ["source"] if config.source is not None else [
        f"sources.{i}" for i in range(len(config.sources))]
    problems: Problems = []
    for path, source_config in zip(paths, config.source_configs, strict=True):
        if SOURCES[source_config.type].needs_broker:
            continue  # its broker is checked with `--connect`
        try:
            open_source(source_config).close()
        except (OSError, ValueError, RuntimeError, RecordingError) as exc:
            problems.append((path, f"{source_config.type} source cannot open: {exc}"))
    return problems


def check_state_dir(config: AgentConfig) -> Problems:
    directory = config.state.dir
    assert directory is not None  # resolved by load_config
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing == directory and not directory.is_dir():
        return [("state.dir", f"{directory} exists and is not a directory")]
    if not os.access(existing, os.W_OK | os.X_OK):
        return [("state.dir", f"{existing} is not writable by this user (the state dir "
                              f"{directory} keeps the outbox and the remote config)")]
    return []


def check_secrets(config: AgentConfig) -> Problems:
    """Secrets in files; a systemd credential exists only inside the unit, so it is checked
    there, when the agent starts."""
    problems: Problems = []
    if config.mqtt.password_file is not None:
        problems += _readable_file(config.mqtt.password_file, "mqtt.password_file",
                                   "the broker password file")
    if config.control.key_file is not None:
        problems += _readable_file(config.control.key_file, "control.key_file",
                                   "the signing key file")
    return problems


def preflight(config: AgentConfig) -> Problems:
    """Every problem found, in the config's order; empty when the agent can start."""
    return (check_models(config) + check_bundle(config) + check_source(config)
            + check_state_dir(config) + check_secrets(config))
