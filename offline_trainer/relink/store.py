"""The worker's folder (`--workdir`), which several workers may share (one folder on a shared
volume) so that the jobs the share spreads over them feed one pool of recordings:

    recordings/<device>/<upload>.npz   the newest upload of each box (older ones pruned)
    recordings/<device>/<upload>.json  its job (groups, rows, ts, the box's bundle)
    bundles/<name>/                    the bundles relinked here
    in-force.json                      the bundle in force for the group after a rollout
    relinks.jsonl                      one line per relink: its inputs, figures and decision
    lock                               held (flock) while one worker relinks

An upload is admitted only when it is a readable recording (`Recording.load`: numpy without
pickles, every array checked) with the job's rows and every task of the bundle in force;
it is written to a temporary name first, so a refusal leaves nothing behind."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from links_tflite.bundle import BundleError, load_bundle
from links_tflite.recording import Recording, RecordingError
from offline_trainer.relink.jobs import Job, JobRefused, parse_job

log = logging.getLogger(__name__)

KEEP_BUNDLES = 4  # relinked bundles kept besides the one in force


@dataclass(frozen=True)
class Stored:
    """One box's newest upload in the workdir."""

    job: Job
    path: Path


class WorkDir:
    def __init__(self, root: Path, default_bundle: Path) -> None:
        self.root = root
        self.default_bundle = default_bundle
        for folder in ("recordings", "bundles"):
            (root / folder).mkdir(parents=True, exist_ok=True)

    # -- the bundle in force ----------------------------------------------------------------
    def bundle_in_force(self) -> Path:
        """The bundle the last successful rollout from this workdir installed, else the
        `--bundle` the worker was started with."""
        pointer = self.root / "in-force.json"
        if pointer.is_file():
            try:
                path = Path(json.loads(pointer.read_text())["path"])
            except (ValueError, KeyError, TypeError):
                log.warning("%s is unreadable: using %s", pointer, self.default_bundle)
                return self.default_bundle
            if path.is_dir():
                return path
        return self.default_bundle

    def set_in_force(self, bundle: Path) -> None:
        pointer = self.root / "in-force.json"
        tmp = pointer.with_name(f".in-force-{uuid.uuid4().hex}.json")
        tmp.write_text(json.dumps({"path": str(bundle.resolve()), "since": time.time()}))
        os.replace(tmp, pointer)
        self.prune_bundles(keep={bundle.resolve()})

    def new_bundle_path(self) -> Path:
        return self.root / "bundles" / f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"

    def prune_bundles(self, keep: set[Path]) -> None:
        """Relinked bundles beyond the newest KEEP_BUNDLES removed, those in `keep` kept."""
        bundles = sorted((p for p in (self.root / "bundles").iterdir() if p.is_dir()),
                         key=lambda p: p.name, reverse=True)
        for old in bundles[KEEP_BUNDLES:]:
            if old.resolve() not in keep:
                shutil.rmtree(old, ignore_errors=True)

    # -- recordings -------------------------------------------------------------------------
    def admit(self, job: Job, data: bytes, bundle: Path) -> Path:
        """Keep the upload as `recordings/<device>/<upload>.npz` when it is a recording of
        the job's rows holding every task of `bundle`; JobRefused otherwise, nothing kept.
        The box's older uploads are pruned (its newest rows are all there is to train on)."""
        try:
            tasks = load_bundle(bundle).models
        except BundleError as exc:
            raise JobRefused(f"the bundle in force cannot be read: {exc}") from None
        folder = self.root / "recordings" / job.device
        folder.mkdir(parents=True, exist_ok=True)
        incoming = folder / f".incoming-{uuid.uuid4().hex}.npz"
        try:
            incoming.write_bytes(data)
            try:
                recording = Recording.load(incoming)
            except RecordingError as exc:
                raise JobRefused(str(exc).replace(str(incoming), "the upload")) from None
            if len(recording) != job.rows:
                raise JobRefused(f"the recording holds {len(recording)} rows, the job says "
                                 f"{job.rows}")
            other = sorted(m for m, spec in tasks.items() if recording.tasks.get(m) != spec)
            if other:
                raise JobRefused(f"the recording lacks the bundle's tasks of {other} (recorded "
                                 "under another bundle?)")
            final = folder / f"{job.upload}.npz"
            os.replace(incoming, final)
        finally:
            incoming.unlink(missing_ok=True)
        (folder / f"{job.upload}.json").write_text(json.dumps(job.to_dict()))
        for old in folder.glob("*.npz"):
            if old != final:
                old.unlink(missing_ok=True)
                old.with_suffix(".json").unlink(missing_ok=True)
        return final

    def recordings(self, group: str) -> list[Stored]:
        """The newest upload of each box of `group`, by device."""
        stored = []
        for folder in sorted((self.root / "recordings").iterdir()):
            newest: Stored | None = None
            for meta in folder.glob("*.json"):
                try:
                    job = parse_job(meta.read_bytes())
                except JobRefused:
                    continue
                path = meta.with_suffix(".npz")
                if group in job.groups and path.is_file() and (
                        newest is None or job.ts > newest.job.ts):
                    newest = Stored(job, path)
            if newest is not None:
                stored.append(newest)
        return stored

    # -- relinks ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def relinking(self) -> Iterator[None]:
        """Held while one worker relinks: workers sharing the folder take turns."""
        with (self.root / "lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def last_relink(self) -> dict[str, Any] | None:
        path = self.root / "relinks.jsonl"
        if not path.is_file():
            return None
        lines = path.read_text().splitlines()
        try:
            return json.loads(lines[-1]) if lines else None
        except ValueError:
            return None

    def record_relink(self, result: dict[str, Any]) -> None:
        with (self.root / "relinks.jsonl").open("a") as handle:
            handle.write(json.dumps(result) + "\n")


def merge(parts: list[tuple[str, Recording]], models: list[str]) -> Recording:
    """The boxes' recordings as one, in time order (`ts`, the stream time of each row):
    frame ids renumbered (boxes number their frames alike), cameras named `<device>/<camera>`
    so that each box's cameras stay apart."""
    cameras: list[str] = []
    ts: list[np.ndarray] = []
    camera_ids: list[np.ndarray] = []
    outputs: dict[str, list[np.ndarray]] = {m: [] for m in models}
    for device, recording in parts:
        names = recording.cameras or []
        ids = recording.camera_ids if recording.camera_ids is not None \
            else np.zeros(len(recording), np.int64)
        mapping = {}
        for camera in sorted({int(c) for c in ids}):
            name = names[camera] if 0 <= camera < len(names) else str(camera)
            mapping[camera] = len(cameras)
            cameras.append(f"{device}/{name}")
        camera_ids.append(np.asarray([mapping[int(c)] for c in ids], np.int64))
        ts.append(recording.ts)
        for m in models:
            outputs[m].append(recording.outputs[m])
    all_ts = np.concatenate(ts) if ts else np.zeros(0)
    order = np.argsort(all_ts, kind="stable")
    tasks = parts[0][1].tasks if parts else {}
    return Recording(
        workload=parts[0][1].workload if parts else "",
        frame_ids=np.arange(len(order), dtype=np.int64), ts=all_ts[order],
        tasks={m: tasks[m] for m in models},
        outputs={m: np.concatenate(v)[order] for m, v in outputs.items()},
        camera_ids=np.concatenate(camera_ids)[order] if camera_ids else None, cameras=cameras)


def time_split(n: int, holdout: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows in time order cut into (the older ones, the newest `holdout` share)."""
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must be in (0, 1), got {holdout}")
    held = max(1, min(n - 1, round(n * holdout)))
    return np.arange(n - held), np.arange(n - held, n)
