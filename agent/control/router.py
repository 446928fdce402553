"""Remote control over MQTT: a router from request topics to their handlers.

Requests arrive on `config/set` and `cmd/<name>`; each is answered on `config/response` or
`cmd/<name>/response`, or on the request's MQTT v5 ResponseTopic when it has an allowed one,
with its CorrelationData echoed. The handlers are a table keyed by the topic's suffix below
the agent's root (`config/set`, `cmd/reselect`, ...), as Frigate's `Dispatcher` and
zigbee2mqtt's bridge requests do it: adding a command is one entry and one handler. Every
request goes the same way: bounded and parsed (agent.limits), its signature checked
(agent.security), its keys checked against what its route takes, handled; every reply is
made by `response()`, the same shape for ok and error, with the errors as (path, message)
pairs (agent.errors). A refusal changes nothing.

paho's callback only queues (with a rate per topic); one worker thread answers in order, and
reloads the config file on SIGHUP.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from agent.control.bundles import REQUEST_KEYS as BUNDLE_KEYS
from agent.control.bundles import BundleUpload
from agent.control.settings import Settings
from agent.control.store import StateStore
from agent.controlled import Controlled
from agent.errors import Errors, RequestError
from agent.limits import (
    MAX_CORRELATION_BYTES,
    RateLimiter,
    check_response_topic,
    clip,
    parse_json,
)
from agent.security import SignatureError, Verifier, is_envelope
from agent.transport import Publisher
from agent.uploads import REQUEST_KEYS as UPLOAD_KEYS
from agent.uploads import parse_request as parse_upload

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 64 * 1024
TRANSACTION = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
COMMON_KEYS = ("transaction", "expires")  # what any request may hold (expires: signed ones)


def response(transaction: str | None, errors: Errors, fields: dict[str, Any]
             ) -> dict[str, Any]:
    """Every reply: `status` (`ok` or `error`), the `transaction` echoed, the route's own
    fields, and `errors` as [{path, message}] (each clipped), empty when ok."""
    return {"status": "error" if errors else "ok", "transaction": transaction, **fields,
            "errors": [{"path": clip(p), "message": clip(m)} for p, m in errors]}


@dataclass(frozen=True)
class Request:
    """A request to act on: parsed, bounded, its signature and transaction checked."""

    body: dict[str, Any]
    transaction: str | None
    signed: bool


@dataclass(frozen=True)
class Route:
    """How the requests on one topic suffix are handled and answered."""

    handle: Callable[[Request], Any]  # the result, or RequestError
    reply: Callable[[Any], dict[str, Any]]  # the reply's own fields from the result (None)
    response_topic: str
    keys: tuple[str, ...] | None = ()  # besides COMMON_KEYS; None: the handler checks them
    command: bool = True  # a signed command must carry `expires` (agent.security)
    max_bytes: Callable[[], int] | None = None  # the request's size bound, when not the usual


class Control:
    """Answers `config/set` and `cmd/<name>` for one agent service (agent.controlled)."""

    def __init__(self, agent: Controlled, publisher: Publisher, store: StateStore,
                 config_path: Path | None = None) -> None:
        self.agent = agent
        self.publisher = publisher
        self.settings = Settings(agent, publisher, store, config_path)
        self.bundles = BundleUpload(agent, store, self.settings.bundle_swapped)
        control = agent.config.control  # read once at start: a bad key stops the agent
        self.verifier = Verifier(control.key(), control.require_signature,
                                 seen_file=store.signatures_file)
        topics = publisher.topics
        self.routes: dict[str, Route] = {
            "config/set": Route(
                lambda r: self.settings.set_config(r.body, r.signed),
                lambda applied: {"version": self.version, "applied": applied or []},
                topics.config_response, keys=None, command=False),
            "cmd/reprofile": self._command("reprofile", lambda r: self.agent.remeasure()),
            "cmd/reselect": self._command("reselect", lambda r: self.agent.reselect()),
            "cmd/forget": self._command("forget", lambda r: self.settings.forget(r.transaction)),
            "cmd/upload": self._command(
                "upload", lambda r: self.agent.upload(parse_upload(r.body)), keys=UPLOAD_KEYS),
            "cmd/bundle": self._command(
                "bundle", lambda r: self.bundles.receive(r.body), keys=BUNDLE_KEYS,
                max_bytes=lambda: self.bundles.max_request_bytes(MAX_REQUEST_BYTES)),
        }
        self._queue: queue.Queue[mqtt.MQTTMessage] = queue.Queue(maxsize=1000)
        self._stop = threading.Event()
        self._reload_requested = False
        self._thread = threading.Thread(target=self._work, name="mlink-control", daemon=True)
        self._response_topics = tuple(control.response_topics)
        self.limiter = RateLimiter(control.rate_per_s, control.burst)
        self.handled = 0
        self.refused = 0
        self.queue_full = 0
        self._logged_limited: set[str] = set()

    def _command(self, name: str, handle: Callable[[Request], Any],
                 keys: tuple[str, ...] = (), max_bytes: Callable[[], int] | None = None
                 ) -> Route:
        """The route of `cmd/<name>`: answered on `cmd/<name>/response` with `command` and
        `result`."""
        return Route(handle, lambda result: {"command": name, "result": result},
                     self.publisher.topics.command_response(name), keys, True, max_bytes)

    def _unknown(self, suffix: str) -> Route:
        """A request on a topic no route takes (an unknown command): refused, and answered
        like a command (the name clipped in the response topic)."""
        name = suffix.removeprefix("cmd/")
        known = ", ".join(s.removeprefix("cmd/") for s in self.routes if s.startswith("cmd/"))

        def refuse(_request: Request) -> None:
            raise RequestError([("command", f"unknown command {name!r} (known: {known})")])

        return Route(refuse, lambda result: {"command": name, "result": result},
                     self.publisher.topics.command_response(name[:64]), keys=None)

    def suffix(self, topic: str) -> str:
        """What a request topic asks for: its suffix below the agent's root (`config/set`,
        `cmd/reselect`); the whole topic when it is not under the root. The one place a
        request topic is parsed."""
        return self.publisher.topics.request_suffix(topic)

    def route(self, topic: str) -> Route:
        suffix = self.suffix(topic)
        return self.routes.get(suffix) or self._unknown(suffix)

    def stats(self) -> dict[str, Any]:
        """For the status: requests answered and refused, and those dropped unanswered (over
        the rate limit per topic, or with the queue full)."""
        return {"handled": self.handled, "refused": self.refused,
                "rate_limited": sum(self.limiter.limited.values()),
                "rate_limited_by_topic": dict(self.limiter.limited),
                "queue_full": self.queue_full}

    @property
    def version(self) -> int:
        """The version of the config in force (agent.control.settings)."""
        return self.settings.version

    def publish_state(self) -> None:
        self.settings.publish_state()

    # -- wiring ------------------------------------------------------------------------------
    def attach(self) -> None:
        topics = self.publisher.topics
        self.publisher.subscribe(topics.config_set, self._enqueue)
        self.publisher.subscribe(topics.command("+"), self._enqueue)
        for root in topics.group_roots:  # `[fleet] groups`: the same requests, to a group
            self.publisher.subscribe(f"{root}/config/set", self._enqueue)
            self.publisher.subscribe(f"{root}/cmd/+", self._enqueue)

    def _rate_key(self, topic: str) -> str:
        """Unknown command names share one bucket, so that they cannot make buckets up."""
        if self.suffix(topic) in self.routes:
            return topic
        return self.publisher.topics.command("<unknown>")

    def _enqueue(self, message: mqtt.MQTTMessage) -> None:
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
            self._queue.put_nowait(message)
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
                message = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._reload_requested:
                    self._reload_requested = False
                    self.settings.reload()
                continue
            while not self.agent.wait_ready(0.2):
                if self._stop.is_set():
                    return
            try:
                self.handle(message)
            except Exception:
                log.exception("control: request on %s failed", message.topic)
                self._answer_failure(message)
            self.handled += 1

    # -- one request ---------------------------------------------------------------------------
    def handle(self, message: mqtt.MQTTMessage) -> None:
        """Answer one request: parsed, checked, handled by its route, replied to."""
        route = self.route(message.topic)
        request, errors, transaction = self._parse(message, route)
        result: Any = None
        if request is not None:
            try:
                self._check_keys(message.topic, route, request.body)
                result = route.handle(request)
            except RequestError as exc:
                errors = exc.errors
            except Exception as exc:  # still answered: every request gets a response
                log.exception("request on %s failed", message.topic)
                errors = [("", f"{type(exc).__name__}: {exc}")]
        reply = response(transaction, errors, route.reply(None if errors else result))
        log.info("%s %s: %s%s", self.suffix(message.topic),
                 transaction, reply["status"], f" {errors}" if errors else "")
        self._reply(message, route.response_topic, reply)

    def _check_keys(self, topic: str, route: Route, body: dict[str, Any]) -> None:
        """A request holding a key its route does not take is refused, each key named."""
        if route.keys is None:
            return
        allowed = (*COMMON_KEYS, *route.keys)
        unknown = [key for key in body if key not in allowed]
        if unknown:
            what = self.suffix(topic)
            raise RequestError([(key, f"unknown key: {what} takes {', '.join(allowed)}")
                                for key in unknown])

    def _parse(self, message: mqtt.MQTTMessage, route: Route
               ) -> tuple[Request | None, Errors, str | None]:
        """The request to act on, or the errors that refuse it, and the transaction to echo.
        Everything bounded before it is looked at: size, nesting, every number."""
        if message.retain:  # delivered from the broker's store: old, maybe already applied
            return None, [("", "retained request refused: publish requests without retain")], None
        _, _, errors = self._reply_to(message)
        if errors:
            return None, errors, None
        max_bytes = route.max_bytes() if route.max_bytes is not None else MAX_REQUEST_BYTES
        try:
            body = parse_json(message.payload or b"{}", max_bytes)
        except RequestError as exc:
            return None, exc.errors, None
        if not isinstance(body, dict):
            return None, [("", "expected a JSON object")], None
        signed = is_envelope(body)
        try:
            body = self.verifier.open(message.topic, body, command=route.command)
        except SignatureError as exc:
            return None, exc.errors, _claimed_transaction(body)
        transaction = body.get("transaction")
        if transaction is not None and (not isinstance(transaction, str)
                                        or not TRANSACTION.match(transaction)):
            return None, [("transaction", "must be a string of 1-128 letters, digits or _.:-")
                          ], None
        return Request(body, transaction, signed), [], transaction

    # -- replies -------------------------------------------------------------------------------
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
                                       (topics.config_set, topics.command("+"),
                                        topics.all_groups))
            if why is not None:
                errors.append(("ResponseTopic", f"{clip(str(requested), 80)!r}: {why}; "
                                                f"answered here instead"))
                requested = None
        return requested, correlation, errors

    def _reply(self, message: mqtt.MQTTMessage, default_topic: str, payload: dict[str, Any]
               ) -> None:
        requested, correlation, _ = self._reply_to(message)
        if payload["status"] == "error":
            self.refused += 1
        self.publisher.respond(requested or default_topic, payload, correlation)

    def _answer_failure(self, message: mqtt.MQTTMessage) -> None:
        """Even a request whose handling failed unexpectedly gets an answer (on the route's
        own response topic)."""
        try:
            route = self.route(message.topic)
            self.publisher.respond(route.response_topic, response(None, [
                ("", "the request could not be handled (see the agent's log)")],
                route.reply(None)), None)
        except Exception:
            log.exception("control: the failure could not be answered either")


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
