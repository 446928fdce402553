"""The config in force and its version: `config/set`, `cmd/forget`, a SIGHUP reload and a
bundle swap each put a new version in force, persist it (agent.control.store) and announce
it once (`config/state`, the status, Home Assistant discovery).

`config/set` carries `transaction`, an optional `version` and a patch (agent.control.patching).
Without `version` the change applies as the next version (the one in force + 1); with one, it
must be above the one in force (optimistic concurrency: a caller that read `config/state`
refuses to overwrite a change it has not seen). The same `version` and `transaction` as the
request in force is a retry, acknowledged with nothing re-applied; so is a request without
`version` that repeats the transaction in force and changes nothing. A signed request must
carry its `version`, which is what protects it from replay. The change applies at a frame
boundary, all of it or, on any error, none of it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from agent.config import AgentConfig, ConfigError, load_config
from agent.control.patching import (
    apply_patch,
    changed_paths,
    flatten,
    merge,
    restart_only_changes,
    settable_from,
    settable_view,
)
from agent.control.store import StateStore
from agent.controlled import Controlled
from agent.errors import RequestError
from agent.homeassistant import discovery_payload, discovery_topic
from agent.limits import MAX_VERSION, check_version
from agent.transport import Publisher, dumps

log = logging.getLogger(__name__)

REQUEST_KEYS = ("transaction", "version")  # a config/set's keys that are not the patch


class Settings:
    """Puts configs in force under growing versions, for one agent (agent.controlled)."""

    def __init__(self, agent: Controlled, publisher: Publisher, store: StateStore,
                 config_path: Path | None = None) -> None:
        self.agent = agent
        self.publisher = publisher
        self.store = store
        self.config_path = config_path
        self.version = max(store.version, store.floor)  # never below a version once in force
        self._discovery_topic: str | None = None

    @property
    def version(self) -> int:
        """The version of the config in force: the agent's, which its status reports."""
        return self.agent.config_version

    @version.setter
    def version(self, version: int) -> None:
        self.agent.config_version = version

    def next_version(self) -> int:
        return min(max(self.version, self.store.version) + 1, MAX_VERSION)

    # -- config/set ----------------------------------------------------------------------------
    def set_config(self, request: dict[str, Any], signed: bool = False) -> list[str]:
        """Apply a `config/set` request; the settable paths it changed."""
        transaction = request.get("transaction")
        patch = {k: v for k, v in request.items() if k not in REQUEST_KEYS}
        if "version" in request:
            version = request["version"]
            check_version(version, self.version)
            assert isinstance(version, int)
            if version == self.version and transaction and transaction == self.store.transaction:
                return []  # a retry of the request in force: acknowledged again, nothing to do
            if version <= self.version:
                raise RequestError([("version", f"stale: {version} is not above the version "
                                                f"in force ({self.version})")])
        elif signed:
            raise RequestError([("version", f"required in a signed request (it is what "
                                            f"protects it from replay): above the version "
                                            f"in force ({self.version})")])
        else:
            version = self.next_version()
            if version <= self.version:
                raise RequestError([("version", f"the version in force ({self.version}) is "
                                                f"the highest there is")])
        if not patch:
            raise RequestError([("", "nothing to set")])
        old = self.agent.config
        new = apply_patch(old, patch)
        try:  # what is put in force must go out as JSON (config/state, status)
            dumps(new.model_dump(mode="json"))
        except ValueError as exc:
            raise RequestError([("", f"the config would not serialise: {exc}")]) from None
        changed = changed_paths(old, new)
        if "version" not in request and not changed and transaction \
                and transaction == self.store.transaction:
            return []  # the request in force again (delivered twice): nothing to do
        self.agent.reconfigure(new)
        try:
            self.store.save(version, transaction, merge(self.store.overrides, patch))
        except OSError as exc:
            self.agent.reconfigure(old)
            raise RequestError([("", f"cannot persist the config: {exc}")]) from None
        self.version = version
        self.announce()
        return changed

    # -- cmd/forget, SIGHUP ----------------------------------------------------------------------
    def forget(self, transaction: str | None) -> dict[str, Any]:
        """cmd/forget: drop the remotely set config; the config file's settings apply again
        (a pushed bundle stays: push another to change it)."""
        if self.config_path is None:
            raise RequestError([("", "this agent runs without a config file to return to")])
        try:
            fresh = self.store.effective(load_config(self.config_path), overrides=False)
        except ConfigError as exc:
            raise RequestError([("", f"the config file cannot be read now: {exc}")]) from None
        dropped = sorted(flatten(self.store.overrides)) if self.store.overrides else []
        changed = self._settle(settable_from(self.agent.config, fresh), transaction, {})
        log.info("cmd/forget: dropped the remote settings %s; changed %s",
                 ", ".join(dropped) or "(none)", ", ".join(changed) or "nothing")
        return {"dropped": dropped, "changed": changed, "version": self.version}

    def reload(self) -> None:
        """SIGHUP: read the config file again; its settable part applies at once, the rest
        needs a restart."""
        if self.config_path is None:
            return
        self.agent.notifier.reloading()
        try:
            fresh = self.store.effective(load_config(self.config_path))
            new = settable_from(self.agent.config, fresh)
            ignored = restart_only_changes(fresh, self.agent.config)
            if ignored:
                log.warning("reload: changes to %s need a restart", ", ".join(ignored))
            self._settle(new, None, self.store.overrides)
            log.info("reloaded %s (version %d)", self.config_path, self.version)
        except (ConfigError, RequestError, OSError) as exc:
            log.error("reload of %s refused, the config in force stays: %s",
                      self.config_path, exc)
        except Exception:
            log.exception("reload failed; the config in force stays")
        finally:
            self.agent.notifier.ready(f"reloaded: version {self.version}")

    def _settle(self, new: AgentConfig, transaction: str | None,
                overrides: dict[str, Any]) -> list[str]:
        """Put `new` in force where it differs (a new version, persisted with `overrides`,
        the status published once), and the config state in any case; the paths changed."""
        changed = changed_paths(self.agent.config, new)
        if changed:
            self.agent.reconfigure(new)
            self.version = self.next_version()
            self.store.save(self.version, transaction, overrides)
            self.agent.publish_status("running")
        elif overrides != self.store.overrides:
            self.store.save(self.version, transaction, overrides)
        self.publish_state()
        return changed

    # -- a bundle swap -------------------------------------------------------------------------
    def bundle_swapped(self) -> None:
        """A pushed bundle is in force: the next version, persisted and announced."""
        self.version = self.next_version()
        self.store.save(self.version, self.store.transaction, self.store.overrides)
        self.announce()

    # -- announcing ----------------------------------------------------------------------------
    def announce(self) -> None:
        """config/state and status after a change in force: a failure to publish them is
        logged, it does not turn the change (already in force and persisted) into a refusal."""
        try:
            self.publish_state()
            self.agent.publish_status("running")
        except Exception:
            log.exception("the change is in force, but config/state or status could not be "
                          "published")

    def publish_state(self) -> None:
        config = self.agent.config
        self.publisher.publish(self.publisher.topics.config_state, {
            "version": self.version,
            "transaction": self.store.transaction,
            "config": config.model_dump(mode="json"),
            "settable": settable_view(config),
        }, qos=1, retain=True)
        self._publish_discovery(config)

    def _publish_discovery(self, config: AgentConfig) -> None:
        """Home Assistant discovery when on; an empty retained message removes it when
        turned off."""
        topic = discovery_topic(config)
        if config.publish.home_assistant:
            self.publisher.publish(topic, discovery_payload(config), qos=1, retain=True)
            self._discovery_topic = topic
        elif self._discovery_topic is not None:
            self.publisher.publish(self._discovery_topic, b"", qos=1, retain=True)
            self._discovery_topic = None
