"""The bundle: what the trainer hands the agent, verified file by file.

A bundle is a directory holding `manifest.json`, `links/*.tflite`, `profile.json` (and,
from later issues, `ensembles/*.tflite`). The manifest lists every other file with its
sha256; loading refuses a bundle with a missing, extra or altered file, or one whose
manifest names a path outside the bundle.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from links_tflite.tasks import TaskSpec, TaskSpecError

log = logging.getLogger(__name__)

FORMAT = "mlink-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PROFILE = "profile.json"


class BundleError(ValueError):
    """A bundle that must not be used; the message says which file and why."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def link_name(source: str, target: str) -> str:
    return f"{source}->{target}"


def safe_relative(root: Path, relative: str, where: str) -> Path:
    """Resolve `relative` under `root`, refusing absolute paths and escapes."""
    pure = PurePosixPath(relative)
    if not relative or pure.is_absolute() or ".." in pure.parts or "\\" in relative:
        raise BundleError(f"{where}: path {relative!r} must be relative and stay inside the bundle")
    resolved = (root / pure).resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise BundleError(f"{where}: path {relative!r} leaves the bundle")
    return resolved


@dataclass(frozen=True)
class LinkEntry:
    """One model link g_ij: the source model's output -> the target model's output."""

    source: str
    target: str
    file: str
    quantization: str
    ops: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return link_name(self.source, self.target)


@dataclass(frozen=True)
class Profile:
    """Measured on held-out frames: link agreement and per-subset ensemble agreement."""

    pairwise: dict[str, dict[str, float]]
    ensembles: dict[str, dict[frozenset[str], float]]
    links: dict[str, dict[str, float]] = field(default_factory=dict)
    held_out_frames: int = 0

    def link_agreement(self, source: str, target: str) -> float:
        return self.pairwise.get(target, {}).get(source, 0.0)

    def ensemble_agreement(self, target: str, sources: frozenset[str]) -> float:
        """p_j(h_{A,j}) for the sources of A that have a link to the target."""
        usable = frozenset(s for s in sources if s in self.pairwise.get(target, {}))
        if not usable:
            return 0.0
        table = self.ensembles.get(target, {})
        if usable in table:
            return table[usable]
        return max(self.link_agreement(s, target) for s in usable)

    def to_dict(self) -> dict[str, Any]:
        return {
            "held_out_frames": self.held_out_frames,
            "pairwise": self.pairwise,
            "ensembles": {
                target: [
                    {"sources": sorted(sources), "agreement": value}
                    for sources, value in sorted(table.items(), key=lambda kv: sorted(kv[0]))
                ]
                for target, table in self.ensembles.items()
            },
            "links": self.links,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        try:
            ensembles = {
                target: {frozenset(row["sources"]): float(row["agreement"]) for row in rows}
                for target, rows in data.get("ensembles", {}).items()
            }
            pairwise = {
                target: {source: float(v) for source, v in row.items()}
                for target, row in data["pairwise"].items()
            }
            return cls(
                pairwise=pairwise,
                ensembles=ensembles,
                links=data.get("links", {}),
                held_out_frames=int(data.get("held_out_frames", 0)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
            raise BundleError(f"{PROFILE}: malformed profile ({problem})") from None


@dataclass(frozen=True)
class Bundle:
    root: Path
    models: dict[str, TaskSpec]
    links: tuple[LinkEntry, ...]
    profile: Profile
    manifest: dict[str, Any]

    def links_into(self, target: str) -> list[LinkEntry]:
        return [link for link in self.links if link.target == target]

    def link(self, source: str, target: str) -> LinkEntry | None:
        for entry in self.links:
            if entry.source == source and entry.target == target:
                return entry
        return None

    def path_of(self, entry: LinkEntry) -> Path:
        return safe_relative(self.root, entry.file, f"links[{entry.name}].file")


def _read_json(path: Path, where: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{where}: missing file {path}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BundleError(f"{where}: expected a JSON object")
    return data


def verify_files(root: Path, files: dict[str, str]) -> None:
    """Every listed file present with its sha256, and no file that is not listed."""
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{MANIFEST}: 'files' must map each bundle file to its sha256")
    for relative, expected in files.items():
        path = safe_relative(root, relative, f"{MANIFEST}: files")
        if not path.is_file():
            raise BundleError(f"{relative}: listed in the manifest but missing from {root}")
        actual = sha256_file(path)
        if actual != expected:
            raise BundleError(
                f"{relative}: sha256 mismatch (manifest {expected}, file {actual}); "
                "the bundle was altered or damaged"
            )
    listed = {str(PurePosixPath(p)) for p in files} | {MANIFEST}
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    extra = sorted(present - listed)
    if extra:
        raise BundleError(f"{root}: files not listed in the manifest: {', '.join(extra)}")


def _parse_links(manifest: dict[str, Any], models: dict[str, TaskSpec]) -> tuple[LinkEntry, ...]:
    entries = []
    for index, raw in enumerate(manifest.get("links", [])):
        where = f"{MANIFEST}: links[{index}]"
        try:
            entry = LinkEntry(
                source=str(raw["source"]),
                target=str(raw["target"]),
                file=str(raw["file"]),
                quantization=str(raw.get("quantization", "")),
                ops=tuple(raw.get("ops", ())),
            )
        except (KeyError, TypeError) as exc:
            raise BundleError(f"{where}: missing or malformed field {exc}") from None
        for role in ("source", "target"):
            if getattr(entry, role) not in models:
                raise BundleError(f"{where}.{role}: unknown model {getattr(entry, role)!r}")
        entries.append(entry)
    return tuple(entries)


def load_bundle(root: str | Path) -> Bundle:
    """Load and verify a bundle directory; raise BundleError saying what is wrong."""
    root = Path(root)
    if not root.is_dir():
        raise BundleError(f"bundle directory not found: {root}")
    manifest = _read_json(root / MANIFEST, MANIFEST)
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{MANIFEST}: format {manifest.get('format')!r} v{manifest.get('format_version')!r} "
            f"is not {FORMAT!r} v{FORMAT_VERSION}"
        )
    verify_files(root, manifest.get("files"))
    try:
        models = {
            model_id: TaskSpec.from_dict(entry["task"], where=f"models.{model_id}.task")
            for model_id, entry in manifest["models"].items()
        }
    except (KeyError, TypeError, AttributeError, TaskSpecError) as exc:
        raise BundleError(f"{MANIFEST}: models: {exc}") from None
    links = _parse_links(manifest, models)
    for entry in links:
        if entry.file not in manifest["files"]:
            raise BundleError(f"{MANIFEST}: link {entry.name} file {entry.file!r} is not listed")
    profile_file = str(manifest.get("profile", PROFILE))
    profile = Profile.from_dict(
        _read_json(safe_relative(root, profile_file, f"{MANIFEST}: profile"), profile_file)
    )
    log.info("bundle %s: %d models, %d links", root, len(models), len(links))
    return Bundle(root=root, models=models, links=links, profile=profile, manifest=manifest)


def write_manifest(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Finish a bundle: list every file under `root` with its sha256, write the manifest."""
    files = {
        path.relative_to(root).as_posix(): sha256_file(path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest, "files": files}
    (root / MANIFEST).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n", "utf-8")
    return full
