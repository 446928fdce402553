"""What the agent keeps in its state directory besides the outbox: the remotely set config
(`config.json`), the highest version ever in force (`version-floor.json`), the signatures
already used (`signatures.json`, agent.security) and pushed bundles (`bundles/<name>/`, with
`bundle-current` the one in force)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from agent.config import AgentConfig, ConfigError
from agent.control.patching import apply_patch, changed_paths
from agent.errors import RequestError
from agent.files import write_atomically
from agent.limits import check_numbers, check_version, parse_json

log = logging.getLogger(__name__)


class StateStore:
    """The remotely set config (`config.json`: version, last transaction, accumulated patch)
    and pushed bundles (`bundles/<name>/`, with `bundle-current` a symlink to the one in
    force)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError([("state.dir", f"{self.root}: cannot be used as the state "
                                             f"directory: {exc.strerror or exc}")]) from None
        self.config_file = self.root / "config.json"
        # the highest version ever in force, kept apart from config.json so that deleting
        # config.json (the documented reset) does not make captured requests usable again
        self.floor_file = self.root / "version-floor.json"
        self.signatures_file = self.root / "signatures.json"  # used signed commands
        self.bundles = self.root / "bundles"
        self.current_link = self.root / "bundle-current"
        self.uploads = self.root / "uploads"
        self.version = 0
        self.transaction: str | None = None
        self.overrides: dict[str, Any] = {}
        self.floor = self._read_floor()
        if self.config_file.exists():
            try:
                stored = parse_json(self.config_file.read_bytes(), 16 * 1024 * 1024)
                version = stored["version"]
                check_version(version, 0)
                transaction = stored.get("transaction")
                overrides = stored.get("overrides", {})
                if not isinstance(overrides, dict) or check_numbers(overrides):
                    raise ValueError("overrides: not an object of bounded numbers")
                self.version, self.transaction = version, transaction
                self.overrides = dict(overrides)
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                log.error("%s is unreadable (%s); starting from the config file",
                          self.config_file, exc)
        self.floor = max(self.floor, self.version)

    def _read_floor(self) -> int:
        if not self.floor_file.exists():
            return 0
        try:
            floor = parse_json(self.floor_file.read_bytes(), 4096)["highest_version"]
            check_version(floor, 0)
            return int(floor)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("%s is unreadable (%s); versions are checked against %s only",
                      self.floor_file, exc, self.config_file.name)
            return 0

    def save(self, version: int, transaction: str | None, overrides: dict[str, Any]) -> None:
        """Persist the remote config; the version floor first, so that it never lags."""
        if version > self.floor:
            write_atomically(self.floor_file, json.dumps({"highest_version": version},
                                                         separators=(",", ":")).encode())
            self.floor = version
        record = {"version": version, "transaction": transaction, "overrides": overrides,
                  "updated": time.time()}
        write_atomically(self.config_file, json.dumps(record, indent=2,
                                                      allow_nan=False).encode())
        self.version, self.transaction, self.overrides = version, transaction, overrides

    def effective(self, file_config: AgentConfig, overrides: bool = True) -> AgentConfig:
        """The file config with the persisted remote changes (unless `overrides` is false)
        and the pushed bundle. Every load says which settings of the file the remote ones
        override, so that an operator editing the file knows why an edit has no effect."""
        config = file_config
        if self.overrides and overrides:
            try:
                config = apply_patch(file_config, self.overrides)
            except RequestError as exc:
                log.error("the remotely set config no longer fits the config file (%s); "
                          "using the file's values", exc)
            else:
                covered = changed_paths(file_config, config)
                if covered:
                    log.warning("the remotely set config (version %d) overrides the config "
                                "file at %s; cmd/forget drops it", self.version,
                                ", ".join(covered))
        pushed = self.current_bundle()
        if pushed is not None:
            config = config.model_copy(
                update={"bundle": config.bundle.model_copy(update={"path": pushed})})
        return config

    def current_bundle(self) -> Path | None:
        if not self.current_link.is_symlink():
            return None
        target = self.current_link.resolve()
        if not target.is_relative_to(self.bundles.resolve()) or not target.is_dir():
            log.error("%s does not point at a pushed bundle; ignored", self.current_link)
            return None
        return target

    def point_at(self, bundle_dir: Path) -> None:
        """Atomically make `bundle_dir` the bundle in force at the next start."""
        tmp = self.root / f".bundle-current.{uuid.uuid4().hex}"
        tmp.symlink_to(bundle_dir.relative_to(self.root))
        os.replace(tmp, self.current_link)

    def prune_bundles(self, keep: set[Path]) -> None:
        keep_resolved = {k.resolve() for k in keep}
        for child in self.bundles.iterdir() if self.bundles.is_dir() else ():
            if child.resolve() not in keep_resolved:
                shutil.rmtree(child, ignore_errors=True)
