"""`cmd/bundle`: a bundle pushed as a tar archive (gzip or not) in base64, whole or in
chunks sent in order, with the whole archive's sha256; checked member by member before
anything is written, unpacked only under the state directory, verified (every file listed in
the manifest with its sha256), then swapped in between two frames. On any failure the bundle
in force stays."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import re
import shutil
import tarfile
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config import ConfigError
from agent.control.store import StateStore
from agent.controlled import Controlled
from agent.errors import RequestError
from links_tflite.bundle import MANIFEST, BundleError, load_bundle, safe_relative

SHA256 = re.compile(r"^[0-9a-f]{64}$")
REQUEST_KEYS = ("sha256", "data", "chunk", "chunks")  # besides transaction (and expires)
MAX_CHUNKS = 100_000
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


@dataclass
class _Upload:
    """A chunked upload under way."""

    sha256: str
    chunks: int
    parts: list[bytes] = field(default_factory=list)


class BundleUpload:
    """Receives pushed bundles for one agent (agent.controlled); `swapped` is called once a
    bundle is in force (the next version, announced: agent.control.settings)."""

    def __init__(self, agent: Controlled, store: StateStore, swapped: Callable[[], None]
                 ) -> None:
        self.agent = agent
        self.store = store
        self.swapped = swapped
        self._upload: _Upload | None = None

    @property
    def max_bytes(self) -> int:
        """The largest archive accepted (`[state] max_bundle_mb`)."""
        return int(self.agent.config.state.max_bundle_mb * 1024 * 1024)

    def max_request_bytes(self, other_fields: int) -> int:
        """The largest request: the archive in base64 and `other_fields` bytes besides."""
        return self.max_bytes * 4 // 3 + 4 + other_fields

    def receive(self, request: dict[str, Any]) -> dict[str, Any]:
        """One archive (base64 `data`) or chunks (`chunk` i of `chunks` n, in order), with the
        archive's `sha256`; verified, unpacked under the state directory, swapped in."""
        sha = request.get("sha256")
        if not isinstance(sha, str) or not SHA256.match(sha):
            raise RequestError([("sha256", "required: the archive's sha256, 64 lowercase hex")])
        try:
            data = base64.b64decode(request.get("data", ""), validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise RequestError([("data", "must be the archive (or a chunk) in base64")]) from None
        max_bytes = self.max_bytes
        chunks, chunk = request.get("chunks", 1), request.get("chunk", 0)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (chunks, chunk)) \
                or not 1 <= chunks <= MAX_CHUNKS or not 0 <= chunk < chunks:
            raise RequestError([("chunk", "chunk must be an integer in [0, chunks)")])
        if chunks > 1:
            if chunk == 0:
                self._upload = _Upload(sha, chunks)
            upload = self._upload
            if upload is None or upload.sha256 != sha or upload.chunks != chunks \
                    or len(upload.parts) != chunk:
                expected = 0 if upload is None or upload.sha256 != sha else len(upload.parts)
                raise RequestError([("chunk", f"out of order: expected chunk {expected} "
                                              f"of this upload")])
            upload.parts.append(data)
            if sum(len(p) for p in upload.parts) > max_bytes:
                self._upload = None
                raise RequestError([("data", f"bundle larger than {max_bytes} bytes")])
            if chunk < chunks - 1:
                return {"received": chunk + 1, "chunks": chunks}
            data = b"".join(upload.parts)
            self._upload = None
        if len(data) > max_bytes:
            raise RequestError([("data", f"bundle larger than {max_bytes} bytes")])
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha:
            raise RequestError([("sha256", f"mismatch: the archive's sha256 is {actual}")])
        return self._install(data, sha, max_bytes)

    def _install(self, archive: bytes, sha: str, max_bytes: int) -> dict[str, Any]:
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
        self.swapped()
        return {"bundle": final.name, "sha256": sha, "models": sorted(bundle.models),
                "links": len(bundle.links), "selection": selection}
