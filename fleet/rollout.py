"""A staged rollout of one change to many boxes: a canary share first, then waves.

Each wave: every box gets the change — a `config/set` (version = the one in force + 1) or a
bundle pushed with `cmd/bundle` — and its response is awaited; then its health is watched
over a window: the box stays online, its status shows the new version and keeps coming with
more outputs published, and its expected agreement and fps are not worse than before the
change by more than the margins. A wave in which any box refuses the change, does not
answer, or fails the health check is rolled back (the boxes of that wave that applied it get
the values they had before on the paths the change set, or the previous bundle) and the
rollout stops: later waves are never sent the change.

`Rollout` is given its `FleetLink` and a clock; `health_of` is the one place that reads a
box's status, so a change of the status format is one edit."""

from __future__ import annotations

import base64
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fleet.link import Box, FleetLink

SETTABLE = ("budget", "selection", "profiling", "publish", "models")


@dataclass(frozen=True)
class Policy:
    canary_share: float = 0.1
    waves: int = 2  # after the canary
    response_timeout_s: float = 20.0
    window_s: float = 12.0  # health watched this long once the box runs the new version
    agreement_margin: float = 0.02  # absolute
    fps_margin: float = 0.25  # relative


@dataclass(frozen=True)
class Health:
    online: bool
    version: int | None
    published: int | None
    agreement: float | None
    fps: float | None


def health_of(box: Box) -> Health:
    status = box.status
    selection = status.get("selection") or {}
    counters = status.get("counters") or {}
    return Health(online=box.availability == "online",
                  version=_int(status.get("config_version")),
                  published=_int(counters.get("published")),
                  agreement=_number(selection.get("expected_agreement")),
                  fps=_number(status.get("fps")))


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


@dataclass
class BoxResult:
    device: str
    wave: int  # 0: the canary
    result: str = "pending"  # applied, refused, no_response, unhealthy, rolled_back,
    #                          rollback_failed, not_sent, unknown
    detail: str = ""
    version_before: int | None = None
    version_after: int | None = None
    before: Health | None = None
    after: Health | None = None


@dataclass
class Outcome:
    ok: bool
    boxes: list[BoxResult] = field(default_factory=list)
    stopped_at: int | None = None  # the wave that failed


def plan_waves(devices: list[str], canary_share: float, waves: int) -> list[list[str]]:
    """The canary (at least one box) then `waves` waves of the rest, as even as can be."""
    devices = sorted(devices)
    if not devices:
        return []
    canary = max(1, math.ceil(canary_share * len(devices)))
    rest = devices[canary:]
    count = max(1, min(waves, len(rest)))
    size = math.ceil(len(rest) / count) if rest else 0
    return [devices[:canary]] + [rest[i:i + size] for i in range(0, len(rest), size or 1)]


def leaves(change: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The paths a change sets (a dict value is merged key by key by the agent)."""
    paths: list[tuple[str, ...]] = []
    for key, value in change.items():
        if isinstance(value, dict) and value:
            paths += leaves(value, (*prefix, key))
        else:
            paths.append((*prefix, key))
    return paths


def inverse(change: dict[str, Any], settable: dict[str, Any]) -> dict[str, Any]:
    """The change that puts back, on every path `change` sets, the value in `settable` (the
    box's settable config before the change; absent = null, which unsets it)."""
    undo: dict[str, Any] = {}
    for path in leaves(change):
        value: Any = settable
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        node = undo
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return undo


class ConfigChange:
    """A `config/set` body: sent with version = in force + 1; undone by the values the box
    had before on the paths it sets."""

    kind = "config"

    def __init__(self, change: dict[str, Any]) -> None:
        unknown = sorted(set(change) - set(SETTABLE) - {"transaction", "version"})
        if unknown:
            raise ValueError(f"the change sets {unknown}: settable are {list(SETTABLE)}")
        self.change = {k: v for k, v in change.items() if k not in ("transaction", "version")}

    def send(self, link: FleetLink, box: Box) -> str:
        assert box.version is not None
        return link.request(box.device, "config/set", {**self.change, "version": box.version + 1})

    def undo(self, link: FleetLink, box: Box, version: int) -> str | None:
        undo = inverse(self.change, box.state.get("settable") or {})
        return link.request(box.device, "config/set", {**undo, "version": version + 1})


class BundlePush:
    """A bundle archive pushed with `cmd/bundle` (in chunks of `chunk_bytes`, sent in order;
    the last one's answer is the install's); undone by pushing `previous`, the archive of the
    bundle in force before, when given (else a failed wave cannot be undone: the rollout
    says so). A swap adds one to the box's config version."""

    kind = "bundle"
    MAX_ARCHIVE_BYTES = 256 * 1024 * 1024

    def __init__(self, archive: bytes, previous: bytes | None = None,
                 chunk_bytes: int = 32 * 1024) -> None:
        for what, data in (("bundle", archive), ("previous bundle", previous or b"")):
            if len(data) > self.MAX_ARCHIVE_BYTES:
                raise ValueError(f"the {what} archive is larger than {self.MAX_ARCHIVE_BYTES} "
                                 "bytes")
        if not archive:
            raise ValueError("the bundle archive is empty")
        self.archive, self.previous, self.chunk_bytes = archive, previous, chunk_bytes

    def _push(self, link: FleetLink, device: str, archive: bytes) -> str:
        sha = hashlib.sha256(archive).hexdigest()
        parts = [archive[i:i + self.chunk_bytes]
                 for i in range(0, len(archive), self.chunk_bytes)] or [b""]
        transaction = ""
        for index, part in enumerate(parts):
            body: dict[str, Any] = {"sha256": sha, "data": base64.b64encode(part).decode()}
            if len(parts) > 1:
                body.update(chunk=index, chunks=len(parts))
            transaction = link.request(device, "cmd/bundle", body)
        return transaction  # the last chunk's: its answer is the install's

    def send(self, link: FleetLink, box: Box) -> str:
        return self._push(link, box.device, self.archive)

    def undo(self, link: FleetLink, box: Box, version: int) -> str | None:
        return None if self.previous is None else self._push(link, box.device, self.previous)


Change = ConfigChange | BundlePush


class Rollout:
    def __init__(self, link: FleetLink, change: dict[str, Any] | Change, policy: Policy,
                 progress: Callable[[str], None] = lambda _line: None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.link = link
        self.change = ConfigChange(change) if isinstance(change, dict) else change
        self.policy = policy
        self.progress = progress
        self.clock = clock
        self.sleep = sleep

    def run(self, devices: list[str]) -> Outcome:
        waves = plan_waves(devices, self.policy.canary_share, self.policy.waves)
        results = {d: BoxResult(d, i) for i, wave in enumerate(waves) for d in wave}
        outcome = Outcome(ok=True, boxes=[results[d] for wave in waves for d in wave])
        for index, wave in enumerate(waves):
            name = "canary" if index == 0 else f"wave {index}"
            self.progress(f"{name}: {len(wave)} box(es): {', '.join(wave)}")
            if not self._wave([results[d] for d in wave], name):
                outcome.ok, outcome.stopped_at = False, index
                for later in waves[index + 1:]:
                    for device in later:
                        results[device].result = "not_sent"
                        results[device].detail = f"the rollout stopped at the {name}"
                break
        return outcome

    # -- one wave -----------------------------------------------------------------------------
    def _wave(self, boxes: list[BoxResult], name: str) -> bool:
        sent: dict[str, tuple[str, Box]] = {}
        for result in boxes:
            box = self.link.box(result.device)
            result.version_before, result.before = box.version, health_of(box)
            if box.version is None:
                result.result, result.detail = "unknown", "no retained config/state"
                continue
            sent[result.device] = (self.change.send(self.link, box), box)
        applied = self._await(boxes, {d: t for d, (t, _) in sent.items()})
        if applied:
            self._watch([b for b in boxes if b.device in applied], name)
        healthy = all(b.result == "applied" for b in boxes)
        if not healthy:
            self._roll_back([b for b in boxes if b.device in applied],
                            {d: box for d, (_, box) in sent.items()}, name)
        return healthy

    def _await(self, boxes: list[BoxResult], sent: dict[str, str]) -> set[str]:
        applied: set[str] = set()
        waiting = dict(sent)
        deadline = self.clock() + self.policy.response_timeout_s
        by_device = {b.device: b for b in boxes}
        while waiting and self.clock() < deadline:
            for device, transaction in list(waiting.items()):
                response = self.link.response(device, transaction)
                if response is None:
                    continue
                del waiting[device]
                result = by_device[device]
                if response.get("status") == "ok":
                    applied.add(device)
                    result.result = "applied"
                    # a config/set answers the version; a bundle swap adds one to it
                    version = _int(response.get("version"))
                    result.version_after = version if version is not None else (
                        None if result.version_before is None else result.version_before + 1)
                else:
                    errors = response.get("errors") or []
                    result.result = "refused"
                    result.detail = "; ".join(f"{e.get('path')}: {e.get('message')}"
                                              for e in errors if isinstance(e, dict))[:300]
            self.sleep(0.05)
        for device in waiting:
            by_device[device].result = "no_response"
            by_device[device].detail = f"no response in {self.policy.response_timeout_s:.0f} s"
        return applied

    def _watch(self, boxes: list[BoxResult], name: str) -> None:
        """Wait until each box's status shows its new version, then `window_s`; judge on the
        last status against the one before the change."""
        first: dict[str, tuple[int, Health]] = {}  # statuses seen, health: at the new version
        deadline = self.clock() + self.policy.response_timeout_s + self.policy.window_s
        settle = None
        while self.clock() < deadline:
            for result in boxes:
                box = self.link.box(result.device)
                health = health_of(box)
                if result.device not in first and health.version is not None \
                        and result.version_after is not None \
                        and health.version >= result.version_after:
                    first[result.device] = (box.statuses, health)
            if len(first) == len(boxes) and settle is None:
                settle = self.clock() + self.policy.window_s
                self.progress(f"{name}: every box runs the change; watching its health "
                              f"for {self.policy.window_s:.0f} s")
            if settle is not None and self.clock() >= settle:
                break
            self.sleep(0.1)
        for result in boxes:
            box = self.link.box(result.device)
            result.after = health_of(box)
            problem = self._problem(result, first.get(result.device), box)
            if problem:
                result.result, result.detail = "unhealthy", problem

    def _problem(self, result: BoxResult, first: tuple[int, Health] | None, box: Box
                 ) -> str | None:
        after, before, policy = result.after, result.before, self.policy
        assert after is not None and before is not None
        if not after.online:
            return f"not online ({box.availability})"
        if first is None:
            return "its status never showed the new version"
        seen, at_start = first
        if box.statuses <= seen or after.published is None or at_start.published is None \
                or after.published <= at_start.published:
            return "no outputs published during the window"
        if before.agreement is not None and (
                after.agreement is None
                or after.agreement < before.agreement - policy.agreement_margin):
            return (f"expected agreement {after.agreement} below {before.agreement:.3f} - "
                    f"{policy.agreement_margin}")
        if before.fps and (after.fps is None or after.fps < before.fps * (1 - policy.fps_margin)):
            return f"fps {after.fps} below {before.fps:.1f} x (1 - {policy.fps_margin})"
        return None

    def _roll_back(self, boxes: list[BoxResult], before: dict[str, Box], name: str) -> None:
        if not boxes:
            return
        self.progress(f"{name} failed: rolling back {len(boxes)} box(es)")
        sent: dict[str, str] = {}
        for result in boxes:
            version = result.version_after or result.version_before or 0
            transaction = self.change.undo(self.link, before[result.device], version)
            if transaction is not None:
                sent[result.device] = transaction
        outcomes = {b.device: BoxResult(b.device, b.wave,
                                        version_before=b.version_after) for b in boxes}
        self._await([outcomes[d] for d in sent], sent)
        for result in boxes:
            undone = outcomes[result.device]
            reason = result.detail or result.result
            if result.device not in sent:
                result.result = "rollback_failed"
                result.detail = f"{reason}; nothing to roll back to (no previous bundle given)"
            elif undone.result == "applied":
                result.result = "rolled_back"
                result.detail = f"{reason}; rolled back to version {undone.version_after}"
            else:
                result.result = "rollback_failed"
                result.detail = f"{reason}; rollback {undone.result}: {undone.detail}"
