"""Remote control over MQTT: `config/set` -> `config/response`, `cmd/<name>` ->
`cmd/<name>/response`, and the retained `config/state`.

A request is JSON. `config/set` carries `transaction`, `version` (greater than the version in
force) and a patch of the remotely settable part of the config: `budget`, `selection`,
`profiling`, `publish` and `models.<id>.enabled`. The patch is merged onto the config in force
and validated by the same strict model as the TOML file (agent/config.py, JSON types strictly:
a number in a string is an error), then applied atomically at a frame boundary: all of it or,
on any error, none of it. Accepted patches are persisted in the state directory and applied
again at every start. Nothing remote can name a file, a path or code: paths are not settable,
and a pushed bundle is unpacked only under the state directory.

Every request gets a response, on the request's MQTT v5 ResponseTopic when it has one, with
its CorrelationData echoed. paho's callback only queues; one worker thread answers in order.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import io
import json
import logging
import os
import queue
import re
import shutil
import tarfile
import threading
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from pydantic import ValidationError

from agent.config import AgentConfig, ConfigError, load_config
from agent.controlled import Controlled
from agent.files import write_atomically
from agent.homeassistant import discovery_payload, discovery_topic
from agent.limits import (
    MAX_CORRELATION_BYTES,
    MAX_VERSION,
    LimitError,
    RateLimiter,
    check_numbers,
    check_response_topic,
    check_version,
    clip,
    parse_json,
)
from agent.publisher import Publisher, dumps
from agent.security import SignatureError, Verifier
from links_tflite.bundle import MANIFEST, BundleError, load_bundle, safe_relative

log = logging.getLogger(__name__)

SETTABLE_SECTIONS = ("budget", "selection", "profiling", "publish")
COMMANDS = ("reprofile", "reselect", "bundle", "forget")
MAX_REQUEST_BYTES = 64 * 1024
TRANSACTION = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")

Errors = list[tuple[str, str]]


class RequestError(ValueError):
    """A request that is refused; `errors` holds (path, message) pairs."""

    def __init__(self, errors: Errors) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{p or '<root>'}: {m}" for p, m in errors))


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


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): data}


def changed_paths(old: AgentConfig, new: AgentConfig) -> list[str]:
    before, after = _flatten(settable_view(old)), _flatten(settable_view(new))
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


def _request_path(loc: tuple[Any, ...], model_ids: list[str]) -> str:
    """`models.2.enabled` in the config is `models.<id>.enabled` in a request."""
    parts = [str(p) for p in loc]
    if len(parts) >= 2 and parts[0] == "models" and parts[1].isdigit():
        number = int(parts[1])
        if number < len(model_ids):
            parts[1] = model_ids[number]
    return ".".join(parts)


def _claimed_transaction(request: dict[str, Any]) -> str | None:
    """The transaction a request refused for its signature claims (in its envelope, or in the
    unsigned request), echoed when well formed so that the caller can match the refusal."""
    inner: Any = request
    if "signed" in request:
        try:
            inner = parse_json(request["signed"], MAX_REQUEST_BYTES)
        except (TypeError, ValueError):
            return None
    transaction = inner.get("transaction") if isinstance(inner, dict) else None
    return transaction if isinstance(transaction, str) and TRANSACTION.match(transaction) \
        else None


class StateStore:
    """What the agent keeps in its state directory besides the outbox: the remotely set
    config (`config.json`: version, last transaction, accumulated patch) and pushed bundles
    (`bundles/<name>/`, with `bundle-current` a symlink to the one in force)."""

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
            write_atomically(self.floor_file, dumps({"highest_version": version}))
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


MAX_ARCHIVE_MEMBERS = 4096  # files and folders in a pushed bundle
MAX_EXPANSION = 100  # unpacked bytes per archive byte, beyond RATIO_FREE_BYTES
RATIO_FREE_BYTES = 1 << 20


def unpack_bundle(archive: bytes, staging: Path, max_bytes: int,
                  max_members: int = MAX_ARCHIVE_MEMBERS, max_ratio: float = MAX_EXPANSION
                  ) -> Path:
    """Unpack a tar archive (gzip or not) under `staging`, refusing links, devices, absolute
    paths and `..`; return the folder that holds the manifest. Every member is checked first
    (name, type, size, the count, the total and its ratio to the archive's size, the free
    disk space): nothing is written unless the whole archive passes."""
    try:
        tar = tarfile.open(fileobj=io.BytesIO(archive), mode="r:*")  # noqa: SIM115
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BundleError(f"not a tar archive: {exc}") from None
    with tar:
        members: list[tuple[tarfile.TarInfo, Path]] = []
        total = 0
        try:
            for member in tar:
                if len(members) >= max_members:
                    raise BundleError(f"the archive holds more than {max_members} members")
                where = f"archive member {member.name!r}"
                if member.isdir():
                    members.append((member, safe_relative(staging, member.name.rstrip("/"),
                                                          where)))
                    continue
                if not member.isreg():
                    raise BundleError(f"{where}: only regular files and folders are allowed")
                if member.size > max_bytes:
                    raise BundleError(f"{where} unpacks to more than {max_bytes} bytes "
                                      f"({member.size})")
                total += member.size
                if total > max_bytes:
                    raise BundleError(f"archive unpacks to more than {max_bytes} bytes")
                if total > RATIO_FREE_BYTES and total > max_ratio * len(archive):
                    raise BundleError(f"archive unpacks to more than {max_ratio:g} times its "
                                      f"size ({len(archive)} bytes)")
                members.append((member, safe_relative(staging, member.name, where)))
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise BundleError(f"not a readable tar archive: {exc}") from None
        free = shutil.disk_usage(staging).free
        if total > free:
            raise BundleError(f"archive unpacks to {total} bytes; {free} are free on the disk")
        try:
            for member, target in members:
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None
                with source, target.open("wb") as out:
                    shutil.copyfileobj(source, out)
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            raise BundleError(f"not a readable tar archive: {exc}") from None
    if (staging / MANIFEST).is_file():
        return staging
    tops = [p for p in staging.iterdir()]
    if len(tops) == 1 and (tops[0] / MANIFEST).is_file():
        return tops[0]
    raise BundleError(f"the archive holds no {MANIFEST} at its top (or in one top folder)")


class Control:
    """Answers `config/set` and `cmd/<name>` for one agent service (agent.controlled)."""

    def __init__(self, agent: Controlled, publisher: Publisher, store: StateStore,
                 config_path: Path | None = None) -> None:
        self.agent = agent
        self.publisher = publisher
        self.store = store
        self.config_path = config_path
        self.version = max(store.version, store.floor)  # never below a version once in force
        control = agent.config.control  # read once at start: a bad key stops the agent
        self.verifier = Verifier(control.key(), control.require_signature,
                                 seen_file=store.signatures_file)
        self._queue: queue.Queue[tuple[str, mqtt.MQTTMessage | None]] = queue.Queue(maxsize=1000)
        self._stop = threading.Event()
        self._reload_requested = False
        self._upload: dict[str, Any] | None = None
        self._discovery_topic: str | None = None
        self._thread = threading.Thread(target=self._work, name="mlink-control", daemon=True)
        self._response_topics = tuple(control.response_topics)
        self.limiter = RateLimiter(control.rate_per_s, control.burst)
        self.handled = 0
        self.refused = 0
        self.queue_full = 0
        self._logged_limited: set[str] = set()

    def stats(self) -> dict[str, Any]:
        """For the status: requests answered and refused, and those dropped unanswered (over
        the rate limit per topic, or with the queue full)."""
        return {"handled": self.handled, "refused": self.refused,
                "rate_limited": sum(self.limiter.limited.values()),
                "rate_limited_by_topic": dict(self.limiter.limited),
                "queue_full": self.queue_full}

    @property
    def version(self) -> int:
        """The version of the config in force: the agent's, which its status reports."""
        return self.agent.config_version

    @version.setter
    def version(self, version: int) -> None:
        self.agent.config_version = version

    # -- wiring ------------------------------------------------------------------------------
    def attach(self) -> None:
        topics = self.publisher.topics
        self.publisher.subscribe(topics.config_set, lambda m: self._enqueue("config", m))
        self.publisher.subscribe(topics.command("+"), lambda m: self._enqueue("command", m))

    def _rate_key(self, topic: str) -> str:
        """Unknown command names share one bucket, so that they cannot make buckets up."""
        name = topic.rsplit("/", 1)[-1]
        if topic == self.publisher.topics.config_set or name in COMMANDS:
            return topic
        return self.publisher.topics.command("<unknown>")

    def _enqueue(self, kind: str, message: mqtt.MQTTMessage) -> None:
        """paho's thread: queue and return; beyond the rate per topic a request is dropped
        unanswered (answering is itself work), counted, logged once per topic."""
        key = self._rate_key(message.topic)
        if not self.limiter.allow(key):
            if key not in self._logged_limited:
                self._logged_limited.add(key)
                log.warning("requests on %s beyond %.0f/s (burst %d): dropped unanswered, "
                            "counted in status.control.rate_limited (logged once)", key,
                            self.limiter.rate, self.limiter.burst)
            return
        try:
            self._queue.put_nowait((kind, message))
        except queue.Full:
            if self.queue_full == 0:
                log.error("control queue full: request on %s dropped (counted in "
                          "status.control.queue_full, logged once)", message.topic)
            self.queue_full += 1

    def request_reload(self) -> None:
        """From a signal handler: only set a flag; the worker reloads."""
        self._reload_requested = True

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10.0)

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                kind, message = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._reload_requested:
                    self._reload_requested = False
                    self._reload()
                continue
            while not self.agent.wait_ready(0.2):
                if self._stop.is_set():
                    return
            try:
                if kind == "config" and message is not None:
                    self._handle_config(message)
                elif message is not None:
                    self._handle_command(message)
            except Exception:
                log.exception("control: request on %s failed", getattr(message, "topic", "?"))
                self._answer_failure(message)
            self.handled += 1

    def _answer_failure(self, message: mqtt.MQTTMessage | None) -> None:
        """Even a request whose handling failed unexpectedly gets an answer."""
        if message is None:
            return
        try:
            is_config = message.topic == self.publisher.topics.config_set
            name = message.topic.rsplit("/", 1)[-1][:64]
            topic = self.publisher.topics.config_response if is_config \
                else self.publisher.topics.command_response(name)
            self.publisher.respond(topic, {
                "status": "error", "transaction": None,
                **({"version": self.version, "applied": []} if is_config
                   else {"command": name, "result": None}),
                "errors": [{"path": "", "message": "the request could not be handled (see "
                                                   "the agent's log)"}]}, None)
        except Exception:
            log.exception("control: the failure could not be answered either")

    # -- responses ---------------------------------------------------------------------------
    def _reply_to(self, message: mqtt.MQTTMessage) -> tuple[str | None, bytes | None, Errors]:
        """The request's MQTT v5 ResponseTopic and CorrelationData (None: not given), or why
        they are refused: a reply goes only under `<root>/reply/` or a topic of `[control]
        response_topics`, never onto the agent's own topics or another device's."""
        props = getattr(message, "properties", None)
        requested = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        errors: Errors = []
        if correlation is not None and len(correlation) > MAX_CORRELATION_BYTES:
            errors.append(("CorrelationData", f"longer than {MAX_CORRELATION_BYTES} bytes"))
            correlation = None
        if requested is not None:
            topics = self.publisher.topics
            why = check_response_topic(str(requested), topics.root, self._response_topics,
                                       (topics.config_set, topics.command("+")))
            if why is not None:
                errors.append(("ResponseTopic", f"{clip(str(requested), 80)!r}: {why}; "
                                                f"answered here instead"))
                requested = None
        return requested, correlation, errors

    def _reply(self, message: mqtt.MQTTMessage, default_topic: str, payload: dict[str, Any]
               ) -> None:
        requested, correlation, _ = self._reply_to(message)
        payload["errors"] = [{"path": clip(e["path"]), "message": clip(e["message"])}
                             for e in payload.get("errors", [])]
        if payload.get("status") == "error":
            self.refused += 1
        self.publisher.respond(requested or default_topic, payload, correlation)

    def _max_request_bytes(self, topic: str) -> int:
        if topic != self.publisher.topics.command("bundle"):
            return MAX_REQUEST_BYTES
        archive = int(self.agent.config.state.max_bundle_mb * 1024 * 1024)
        return archive * 4 // 3 + 4 + MAX_REQUEST_BYTES  # base64 and the other fields

    def _parse(self, message: mqtt.MQTTMessage) -> tuple[dict[str, Any] | None, Errors,
                                                         str | None]:
        """The request to act on, or the errors that refuse it, and the transaction to echo.
        Everything bounded before it is looked at: size, nesting, every number."""
        if message.retain:  # delivered from the broker's store: old, maybe already applied
            return None, [("", "retained request refused: publish requests without retain")], None
        _, _, errors = self._reply_to(message)
        if errors:
            return None, errors, None
        try:
            request = parse_json(message.payload or b"{}", self._max_request_bytes(message.topic))
        except LimitError as exc:
            return None, exc.errors, None
        if not isinstance(request, dict):
            return None, [("", "expected a JSON object")], None
        try:
            request = self.verifier.open(message.topic, request,
                                         command=message.topic != self.publisher.topics.config_set)
        except SignatureError as exc:
            return None, exc.errors, _claimed_transaction(request)
        transaction = request.get("transaction")
        if transaction is not None and (not isinstance(transaction, str)
                                        or not TRANSACTION.match(transaction)):
            return None, [("transaction", "must be a string of 1-128 letters, digits or _.:-")
                          ], None
        return request, [], transaction

    # -- config/set ----------------------------------------------------------------------------
    def _handle_config(self, message: mqtt.MQTTMessage) -> None:
        request, errors, transaction = self._parse(message)
        applied: list[str] = []
        if request is not None:
            try:
                applied = self._apply_config_request(request)
            except RequestError as exc:
                errors = exc.errors
            except Exception as exc:  # still answered: every request gets a response
                log.exception("config/set %s failed", transaction)
                errors = [("", f"{type(exc).__name__}: {exc}")]
        response = {
            "status": "error" if errors else "ok",
            "transaction": transaction,
            "version": self.version,
            "errors": [{"path": p, "message": m} for p, m in errors],
            "applied": applied,
        }
        log.info("config/set %s: %s%s", transaction, response["status"],
                 f" {errors}" if errors else f" {applied}")
        self._reply(message, self.publisher.topics.config_response, response)

    def _apply_config_request(self, request: dict[str, Any]) -> list[str]:
        version = request.get("version")
        transaction = request.get("transaction")
        try:
            check_version(version, self.version)
        except LimitError as exc:
            raise RequestError(exc.errors) from None
        assert isinstance(version, int)
        patch = {k: v for k, v in request.items() if k not in ("transaction", "version")}
        if version == self.version and transaction and transaction == self.store.transaction:
            return []  # a retry of the request in force: acknowledged again, nothing to do
        if version <= self.version:
            raise RequestError([("version", f"stale: {version} is not above the version in "
                                            f"force ({self.version})")])
        if not patch:
            raise RequestError([("", "nothing to set")])
        old = self.agent.config
        new = apply_patch(old, patch)
        try:  # what is put in force must go out as JSON (config/state, status)
            dumps(new.model_dump(mode="json"))
        except ValueError as exc:
            raise RequestError([("", f"the config would not serialise: {exc}")]) from None
        changed = changed_paths(old, new)
        self.agent.reconfigure(new)
        try:
            self.store.save(version, transaction, merge(self.store.overrides, patch))
        except OSError as exc:
            self.agent.reconfigure(old)
            raise RequestError([("", f"cannot persist the config: {exc}")]) from None
        self.version = version
        self._announce()
        return changed

    def _announce(self) -> None:
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

    def _reload(self) -> None:
        """SIGHUP: read the config file again; its settable part applies at once, the rest
        needs a restart."""
        if self.config_path is None:
            return
        self.agent.notifier.reloading()
        try:
            fresh = self.store.effective(load_config(self.config_path))
            current = self.agent.config
            new = self._settable_from(fresh)
            ignored = [k for k in ("device_id", "mqtt", "bundle", "source", "sources", "state",
                                  "control")
                       if getattr(fresh, k) != getattr(current, k)]
            shape = [m.model_copy(update={"enabled": True}) for m in fresh.models]
            if shape != [m.model_copy(update={"enabled": True}) for m in current.models]:
                ignored.append("models (other than enabled)")
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

    def _settable_from(self, config: AgentConfig) -> AgentConfig:
        """The config in force with the settable part of `config` (its models that exist)."""
        current = self.agent.config
        patch = settable_view(config)
        patch["models"] = {k: v for k, v in patch["models"].items()
                           if k in {m.id for m in current.models}}
        return apply_patch(current, patch)

    def _settle(self, new: AgentConfig, transaction: str | None,
                overrides: dict[str, Any]) -> list[str]:
        """Put `new` in force where it differs (a new version, persisted with `overrides`,
        the status published once), and the config state in any case; the paths changed."""
        changed = changed_paths(self.agent.config, new)
        if changed:
            self.agent.reconfigure(new)
            self.version = min(max(self.version, self.store.version) + 1, MAX_VERSION)
            self.store.save(self.version, transaction, overrides)
            self.agent.publish_status("running")
        elif overrides != self.store.overrides:
            self.store.save(self.version, transaction, overrides)
        self.publish_state()
        return changed

    def _forget(self, transaction: str | None) -> dict[str, Any]:
        """cmd/forget: drop the remotely set config; the config file's settings apply again
        (a pushed bundle stays: push another to change it)."""
        if self.config_path is None:
            raise RequestError([("", "this agent runs without a config file to return to")])
        try:
            fresh = self.store.effective(load_config(self.config_path), overrides=False)
        except ConfigError as exc:
            raise RequestError([("", f"the config file cannot be read now: {exc}")]) from None
        dropped = sorted(_flatten(self.store.overrides)) if self.store.overrides else []
        changed = self._settle(self._settable_from(fresh), transaction, {})
        log.info("cmd/forget: dropped the remote settings %s; changed %s",
                 ", ".join(dropped) or "(none)", ", ".join(changed) or "nothing")
        return {"dropped": dropped, "changed": changed, "version": self.version}

    # -- cmd/<name> ----------------------------------------------------------------------------
    def _handle_command(self, message: mqtt.MQTTMessage) -> None:
        name = message.topic.rsplit("/", 1)[-1]
        request, errors, transaction = self._parse(message)
        result: dict[str, Any] | None = None
        if request is not None:
            try:
                if name == "reprofile":
                    result = self.agent.remeasure()
                elif name == "reselect":
                    result = self.agent.reselect()
                elif name == "bundle":
                    result = self._bundle(request)
                elif name == "forget":
                    result = self._forget(transaction)
                else:
                    raise RequestError([("command", f"unknown command {name!r} "
                                                    f"(known: {', '.join(COMMANDS)})")])
            except RequestError as exc:
                errors = exc.errors
            except Exception as exc:  # the agent's own refusal (selection, bundle, model)
                log.exception("command %s failed", name)
                errors = [("", f"{type(exc).__name__}: {exc}")]
        response = {
            "status": "error" if errors else "ok",
            "transaction": transaction,
            "command": name,
            "errors": [{"path": p, "message": m} for p, m in errors],
            "result": result,
        }
        log.info("cmd/%s %s: %s", name, transaction, response["status"])
        topic = self.publisher.topics.command_response(name if name in COMMANDS else name[:64])
        self._reply(message, topic, response)

    def _bundle(self, request: dict[str, Any]) -> dict[str, Any]:
        """One archive (base64 `data`) or chunks (`chunk` i of `chunks` n, in order), with the
        archive's `sha256`; verified, unpacked under the state directory, swapped in."""
        sha = request.get("sha256")
        if not isinstance(sha, str) or not SHA256.match(sha):
            raise RequestError([("sha256", "required: the archive's sha256, 64 lowercase hex")])
        try:
            data = base64.b64decode(request.get("data", ""), validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise RequestError([("data", "must be the archive (or a chunk) in base64")]) from None
        max_bytes = int(self.agent.config.state.max_bundle_mb * 1024 * 1024)
        chunks, chunk = request.get("chunks", 1), request.get("chunk", 0)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (chunks, chunk)) \
                or not 1 <= chunks <= 100_000 or not 0 <= chunk < chunks:
            raise RequestError([("chunk", "chunk must be an integer in [0, chunks)")])
        if chunks > 1:
            if chunk == 0:
                self._upload = {"sha256": sha, "chunks": chunks, "parts": []}
            upload = self._upload
            if upload is None or upload["sha256"] != sha or upload["chunks"] != chunks \
                    or len(upload["parts"]) != chunk:
                expected = 0 if upload is None or upload["sha256"] != sha else len(upload["parts"])
                raise RequestError([("chunk", f"out of order: expected chunk {expected} "
                                              f"of this upload")])
            upload["parts"].append(data)
            if sum(len(p) for p in upload["parts"]) > max_bytes:
                self._upload = None
                raise RequestError([("data", f"bundle larger than {max_bytes} bytes")])
            if chunk < chunks - 1:
                return {"received": chunk + 1, "chunks": chunks}
            data = b"".join(upload["parts"])
            self._upload = None
        if len(data) > max_bytes:
            raise RequestError([("data", f"bundle larger than {max_bytes} bytes")])
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha:
            raise RequestError([("sha256", f"mismatch: the archive's sha256 is {actual}")])
        return self._install_bundle(data, sha, max_bytes)

    def _install_bundle(self, archive: bytes, sha: str, max_bytes: int) -> dict[str, Any]:
        self.store.bundles.mkdir(parents=True, exist_ok=True)
        staging = self.store.bundles / f".incoming-{uuid.uuid4().hex}"
        staging.mkdir()
        final = self.store.bundles / f"{time.strftime('%Y%m%dT%H%M%S')}-{sha[:12]}"
        if final.exists():  # the same archive pushed again within the second
            final = final.with_name(f"{final.name}-{uuid.uuid4().hex[:6]}")
        try:
            root = unpack_bundle(archive, staging, 4 * max_bytes)
            bundle = load_bundle(root)  # every file present, listed and matching its sha256
            os.replace(root, final)
            previous = self.agent.bundle_root
            try:
                selection = self.agent.swap_bundle(load_bundle(final))
            except Exception:
                shutil.rmtree(final, ignore_errors=True)
                raise
            self.store.point_at(final)
            self.store.prune_bundles({final, previous})
        except BundleError as exc:  # named inside the archive, not by this box's paths
            message = str(exc).replace(f"{staging}{os.sep}", "")
            message = message.replace(str(staging), "the archive")
            raise RequestError([("data", f"bundle refused, the old one stays: {message}")]
                               ) from None
        except ConfigError as exc:  # e.g. a configured model missing from the new bundle
            raise RequestError([("data", f"bundle refused, the old one stays: {path}: {msg}")
                                for path, msg in exc.errors]) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self.version = min(max(self.version, self.store.version) + 1, MAX_VERSION)
        self.store.save(self.version, self.store.transaction, self.store.overrides)
        self._announce()
        return {"bundle": final.name, "sha256": sha, "models": sorted(bundle.models),
                "links": len(bundle.links), "selection": selection}
