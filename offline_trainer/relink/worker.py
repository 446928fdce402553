"""One trainer worker: jobs from the share, each collected, then a relink of the group when
its recordings allow one, and the new bundle rolled out when it wins.

Per job: read and bound it (`jobs.parse_job`); a job for another group is ignored (counted);
collect the upload (`collector.UploadCollector`: bounded, checked, admitted, cleared); the job
is acknowledged once the upload is kept or refused, so a worker that dies while collecting
leaves the job to its session. Then, holding the workdir's lock (workers sharing the workdir
take turns), relink unless the last relink already used the same uploads; roll the new
bundle out if it wins, and make it the bundle in force when every wave applied it. Every job
ends in one result, published on `<prefix>/fleet/relink/results` and printed; a refused job
changed nothing."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from offline_trainer.relink.collector import UploadCollector
from offline_trainer.relink.jobs import JobRefused, parse_job
from offline_trainer.relink.link import Delivery
from offline_trainer.relink.relinker import ROLL_OUT, Relinker
from offline_trainer.relink.store import WorkDir

log = logging.getLogger(__name__)


class JobSource(Protocol):
    """What the worker needs of its job connection (link.TrainerLink)."""

    def next_job(self, timeout_s: float | None) -> Delivery | None: ...

    def ack(self, delivery: Delivery) -> None: ...

    def stop_taking(self) -> None: ...

    def publish_result(self, result: dict[str, Any]) -> None: ...


class RolloutRunner(Protocol):
    def run(self, group: str, bundle: Path, previous: Path) -> dict[str, Any]: ...


class Worker:
    def __init__(self, name: str, group: str, jobs: JobSource, collector: UploadCollector,
                 relinker: Relinker, rollout: RolloutRunner, workdir: WorkDir,
                 report: Callable[[dict[str, Any]], None] = lambda _result: None) -> None:
        self.name, self.group = name, group
        self.jobs, self.collector, self.relinker, self.rollout = jobs, collector, relinker, rollout
        self.workdir, self.report = workdir, report
        self.counts = {"jobs": 0, "refused": 0, "ignored": 0, "failed": 0, "relinks": 0,
                       "rollouts": 0}

    def run(self, once: bool = False, max_wait_s: float = 0.0) -> int:
        """Handle jobs; with `once`, the first job of the group, then return. Returns 0, or 1
        when that job was refused, its relink failed or its rollout failed; 3 when no job
        came for `max_wait_s` seconds (0: wait for ever)."""
        idle_since = time.monotonic()
        while True:
            if max_wait_s > 0 and time.monotonic() - idle_since >= max_wait_s:
                return 3
            delivery = self.jobs.next_job(0.5)
            if delivery is None:
                continue
            result = self.handle(delivery, last=once)
            idle_since = time.monotonic()
            if once and result["decision"] != "ignored":
                return 1 if result["decision"] in ("refused", "failed") or (
                    result.get("rollout") and not result["rollout"]["ok"]) else 0

    def handle(self, delivery: Delivery, last: bool = False) -> dict[str, Any]:
        """One job, from the broker to its result (module doc). `last`: this worker leaves
        the share before the job is acknowledged, so no other job is sent to it."""
        result: dict[str, Any] = {"worker": self.name, "group": self.group}
        try:
            job = parse_job(delivery.payload)
        except JobRefused as exc:
            return self._done({**result, "decision": "refused", "why": f"job: {exc}"},
                              delivery, last)
        result.update(job=job.upload, device=job.device, job_rows=job.rows,
                      reason=job.reason)
        if self.group not in job.groups:
            self.jobs.ack(delivery)
            return self._done({**result, "decision": "ignored",
                               "why": f"the job's groups {list(job.groups)} lack {self.group}"})
        self.counts["jobs"] += 1
        try:
            self.collector.collect(job, self.workdir.bundle_in_force())
        except JobRefused as exc:
            return self._done({**result, "decision": "refused", "why": str(exc)}, delivery,
                              last)
        if last:
            self.jobs.stop_taking()
        self.jobs.ack(delivery)
        try:
            outcome = self._relink()
        except Exception as exc:  # one failed relink must not end a worker; the upload is kept
            log.exception("relink failed")
            outcome = {"decision": "failed", "why": f"relink failed: {type(exc).__name__}: "
                                                    f"{exc}"[:500]}
        return self._done({**result, **outcome})

    def _relink(self) -> dict[str, Any]:
        with self.workdir.relinking():
            stored = self.workdir.recordings(self.group)
            uploads = sorted(f"{s.job.device}/{s.job.upload}" for s in stored)
            last = self.workdir.last_relink()
            if last is not None and sorted(last.get("uploads", [])) == uploads:
                return {"decision": "skipped", "uploads": uploads,
                        "why": "the last relink used these same uploads"}
            in_force = self.workdir.bundle_in_force()
            decision = self.relinker.relink(stored, in_force, self.workdir.new_bundle_path())
            outcome: dict[str, Any] = {**decision.to_dict(), "in_force": in_force.name}
            if decision.bundle is None:  # waiting for rows: no relink made
                return outcome
            self.counts["relinks"] += 1
            if decision.action == ROLL_OUT:
                self.counts["rollouts"] += 1
                rollout = self.rollout.run(self.group, decision.bundle, in_force)
                outcome["rollout"] = rollout
                if rollout["ok"]:
                    self.workdir.set_in_force(decision.bundle)
                    outcome["in_force"] = decision.bundle.name
            self.workdir.record_relink({**outcome, "ts": time.time()})
            self.workdir.prune_bundles(keep={self.workdir.bundle_in_force().resolve()})
            return outcome

    def _done(self, result: dict[str, Any], delivery: Delivery | None = None,
              last: bool = False) -> dict[str, Any]:
        if delivery is not None:  # a refused upload: acknowledged, nothing kept
            if last:
                self.jobs.stop_taking()
            self.jobs.ack(delivery)
        if result["decision"] in ("refused", "ignored", "failed"):
            self.counts[result["decision"]] += 1
            log.warning("job %s: %s: %s", result.get("job", "?"), result["decision"],
                        result["why"])
        try:
            self.jobs.publish_result(result)
        except (OSError, ValueError, RuntimeError) as exc:  # the result is printed anyway
            log.warning("result not published: %s", exc)
        self.report(result)
        return result


def print_result(result: dict[str, Any]) -> None:
    """One line per job for the operator, then its JSON."""
    line = f"job {result.get('job', '?')} from {result.get('device', '?')}: " \
           f"{result['decision']}: {result.get('why', '')}"
    rollout = result.get("rollout")
    if rollout is not None:
        line += f"; rollout {'complete' if rollout['ok'] else 'FAILED'}: " + ", ".join(
            f"{b['device']} {b['result']}" for b in rollout["boxes"])
    print(line, flush=True)
    print(json.dumps(result), flush=True)
