"""An upload gathered from the broker: its retained manifest and chunks
(`<prefix>/<device>/uploads/<id>` and `.../<id>/<n>`), bounded as they come, checked whole
(every chunk, the total size, the sha256), admitted to the workdir as a recording of the
bundle's tasks, and only then cleared on the broker (a zero-length retained message on each
chunk topic and on the manifest). Any failure refuses the job: nothing is kept, nothing
cleared, nothing trained."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from offline_trainer.relink.jobs import MAX_CHUNK_BYTES, Job, JobRefused, parse_job
from offline_trainer.relink.store import WorkDir

log = logging.getLogger(__name__)


class UploadAssembly:
    """One upload's messages, fed as (part, payload): part None is the retained manifest, n
    chunk n. Bounded as they come: a chunk over MAX_CHUNK_BYTES, outside 0..chunks-1, or more
    bytes than the job's size refuse the job at once."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.manifest: Job | None = None
        self.parts: dict[int, bytes] = {}
        self.ignored = 0  # chunks repeated
        self.problem: str | None = None  # the first bound broken

    def feed(self, part: int | None, payload: bytes) -> None:
        if self.problem is not None:
            return
        try:
            self._feed(part, payload)
        except JobRefused as exc:
            self.problem = str(exc)

    def _feed(self, part: int | None, payload: bytes) -> None:
        job = self.job
        if part is None:
            if not payload:
                raise JobRefused("the upload was cleared on the broker (collected already?)")
            manifest = parse_job(payload)
            if not manifest.same_upload(job):
                raise JobRefused("the retained manifest differs from the job (upload, device, "
                                 "rows, chunks, size or sha256)")
            self.manifest = manifest
            return
        if not 0 <= part < job.chunks:
            raise JobRefused(f"chunk {part}: the job has {job.chunks} chunks")
        if len(payload) > MAX_CHUNK_BYTES:
            raise JobRefused(f"chunk {part}: larger than {MAX_CHUNK_BYTES} bytes")
        if not payload:
            raise JobRefused(f"chunk {part}: empty (the upload was cleared)")
        if part in self.parts:
            self.ignored += 1
            return
        self.parts[part] = payload
        if sum(len(p) for p in self.parts.values()) > job.size:
            raise JobRefused(f"the chunks hold more than the job's {job.size} bytes")

    @property
    def done(self) -> bool:
        return self.problem is not None or (
            self.manifest is not None and len(self.parts) == self.job.chunks)

    def data(self) -> bytes:
        """The upload's bytes, checked whole; JobRefused says what is wrong."""
        if self.problem is not None:
            raise JobRefused(self.problem)
        job = self.job
        if self.manifest is None:
            raise JobRefused("no retained manifest for the upload (collected already, or "
                             "never published)")
        missing = [i for i in range(job.chunks) if i not in self.parts]
        if missing:
            raise JobRefused(f"chunks missing: {missing[:10]}{' ...' if len(missing) > 10 else ''}"
                             f" of {job.chunks}")
        data = b"".join(self.parts[i] for i in range(job.chunks))
        if len(data) != job.size:
            raise JobRefused(f"the chunks hold {len(data)} bytes, the job says {job.size}")
        actual = hashlib.sha256(data).hexdigest()
        if actual != job.sha256:
            raise JobRefused(f"sha256 mismatch: the chunks' is {actual}, the job's {job.sha256}")
        return data


class UploadReader(Protocol):
    """What the collector needs of the broker (offline_trainer.relink.link.TrainerLink)."""

    def gather(self, job: Job, feed: Callable[[int | None, bytes], None],
               done: Callable[[], bool], timeout_s: float) -> None: ...

    def clear(self, job: Job) -> None: ...


class UploadCollector:
    """`collect(job)`: the upload gathered, admitted to the workdir (`WorkDir.admit`: a
    recording of the bundle's tasks with the job's rows), then cleared on the broker; returns
    the recording's path. JobRefused on any failure, with nothing changed."""

    def __init__(self, reader: UploadReader, workdir: WorkDir, timeout_s: float = 30.0) -> None:
        self.reader, self.workdir, self.timeout_s = reader, workdir, timeout_s

    def collect(self, job: Job, bundle: Path) -> Path:
        assembly = UploadAssembly(job)
        self.reader.gather(job, assembly.feed, lambda: assembly.done, self.timeout_s)
        if not assembly.done and assembly.problem is None:
            got = f"{len(assembly.parts)} of {job.chunks} chunks"
            manifest = "" if assembly.manifest is not None else ", no retained manifest"
            raise JobRefused(f"the upload did not come whole in {self.timeout_s:.0f} s "
                             f"({got}{manifest})")
        path = self.workdir.admit(job, assembly.data(), bundle)
        self.reader.clear(job)
        log.info("upload %s of %s: %d rows kept in %s, cleared on the broker", job.upload,
                 job.device, job.rows, path)
        return path
