"""The decision carried out: the new bundle pushed to the group's online boxes with the fleet
tool's staged rollout (`fleet.rollout.Rollout` with a `BundlePush`, the `mlink-fleet push`
path: a canary, then waves, each box's answer awaited and its health watched), the bundle in
force given as the one a failing wave is rolled back to."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleet.cli import bundle_archive, group_members
from fleet.link import FleetLink
from fleet.rollout import BundlePush, Policy, Rollout


class GroupRollout:
    """`run(group, bundle, previous)`: the staged rollout; returns its outcome as a dict
    (ok, boxes: [{device, wave, result, detail}], stopped_at)."""

    def __init__(self, connect: Callable[[], FleetLink], policy: Policy, settle_s: float = 1.0,
                 progress: Callable[[str], None] = lambda _line: None) -> None:
        self.connect, self.policy, self.settle_s, self.progress = (
            connect, policy, settle_s, progress)

    def run(self, group: str, bundle: Path, previous: Path) -> dict[str, Any]:
        change = BundlePush(bundle_archive(bundle), bundle_archive(previous))
        link = self.connect()
        try:
            time.sleep(self.settle_s)  # the boxes' retained status and config/state arrive
            devices = sorted(group_members(link.boxes(), group))
            if not devices:
                return {"ok": False, "boxes": [], "stopped_at": None,
                        "detail": f"no online box lists the group {group!r}"}
            outcome = Rollout(link, change, self.policy, progress=self.progress).run(devices)
        finally:
            link.close()
        return {"ok": outcome.ok, "stopped_at": outcome.stopped_at,
                "boxes": [{"device": b.device, "wave": b.wave, "result": b.result,
                           "detail": b.detail} for b in outcome.boxes]}
