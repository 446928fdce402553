"""The bundle: what the trainer hands the agent, verified file by file.

A bundle is a directory holding `manifest.json`, `links/*.tflite` (a sequence link has two:
its encoder and its one-step decoder) and `profile.json`. The ensembles are learned
per-source weights stored in the manifest (no file of their own). The manifest lists every
other file with its sha256; loading refuses a bundle with a missing, extra or altered file,
or one whose manifest names a path outside the bundle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from links_tflite.bag import BAG_OUTPUT, BagDecoding, parse_tokens
from links_tflite.tasks import TaskSpec, TaskSpecError, parse_tasks

log = logging.getLogger(__name__)

FORMAT = "mlink-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PROFILE = "profile.json"
POOLINGS = frozenset({"mean", "box_vote", "log_linear", "logit_mean", "heaviest_source"})


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
    architecture: str = "vec2vec"
    decoder: str = ""  # the one-step decoder file of a sequence target ("" otherwise)
    output: str = ""  # "logits", "tokens" (a decoder) or "bag" (links_tflite.bag)
    bag: BagDecoding | None = None  # a bag link's tokens and threshold

    @property
    def name(self) -> str:
        return link_name(self.source, self.target)

    @property
    def files(self) -> tuple[str, ...]:
        return (self.file, self.decoder) if self.decoder else (self.file,)


@dataclass(frozen=True)
class EnsembleEntry:
    """h_j: per-source weights, renormalised over whichever sources are active, and how the
    present links' outputs are pooled (links_tflite.ensemble.POOLING)."""

    target: str
    method: str
    sources: tuple[str, ...]
    weights: dict[str, float] = field(default_factory=dict)
    pooling: str = "mean"
    min_share: float = 0.0  # a present source under this share of the weight is not read


@dataclass(frozen=True)
class Profile:
    """Measured on held-out frames: link agreement and per-subset ensemble agreement."""

    pairwise: dict[str, dict[str, float]]
    ensembles: dict[str, dict[frozenset[str], float]]
    links: dict[str, dict[str, float]] = field(default_factory=dict)
    held_out_frames: int = 0
    # per subset: best_single, gain and the paper's case (dominance / mutual_assistance)
    subset_details: dict[str, dict[frozenset[str], dict[str, Any]]] = field(
        default_factory=dict)
    subsets_sampled: dict[str, bool] = field(default_factory=dict)
    priors: dict[str, float] = field(default_factory=dict)  # target -> its prior, held out
    # model -> agreement of its own last exact output at age 1, 2, ... frames of its camera
    # (links_tflite.temporal.reuse_curve); absent from bundles trained before it
    reuse: dict[str, tuple[float, ...]] = field(default_factory=dict)

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
                    {"sources": sorted(sources), "agreement": value,
                     **self.subset_details.get(target, {}).get(sources, {})}
                    for sources, value in sorted(table.items(),
                                                 key=lambda kv: (len(kv[0]), sorted(kv[0])))
                ]
                for target, table in self.ensembles.items()
            },
            "subsets_sampled": self.subsets_sampled,
            "links": self.links,
            "priors": self.priors,
            **({"reuse": {m: list(c) for m, c in self.reuse.items()}} if self.reuse else {}),
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
            details = {
                target: {
                    frozenset(row["sources"]): {
                        k: v for k, v in row.items() if k not in ("sources", "agreement")
                    }
                    for row in rows
                }
                for target, rows in data.get("ensembles", {}).items()
            }
            return cls(
                pairwise=pairwise,
                ensembles=ensembles,
                links=data.get("links", {}),
                held_out_frames=int(data.get("held_out_frames", 0)),
                subset_details=details,
                subsets_sampled={k: bool(v) for k, v in data.get("subsets_sampled", {}).items()},
                priors={str(k): float(v) for k, v in data.get("priors", {}).items()},
                reuse={str(k): _reuse_curve(v) for k, v in data.get("reuse", {}).items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
            raise BundleError(f"{PROFILE}: malformed profile ({problem})") from None


MAX_REUSE_AGE = 64  # the longest reuse curve a profile may carry


def _reuse_curve(values: Any) -> tuple[float, ...]:
    """A profile's reuse curve: agreements in [0, 1], at most `MAX_REUSE_AGE` ages."""
    curve = tuple(float(x) for x in values)
    if len(curve) > MAX_REUSE_AGE or not all(0.0 <= x <= 1.0 for x in curve):
        raise ValueError(f"a reuse curve holds at most {MAX_REUSE_AGE} agreements in [0, 1]")
    return curve


@dataclass(frozen=True)
class Prior:
    """A target's constant predictor (`links_tflite.prior`): its one output, and for a
    regression target the range of outputs the model produced (links are clamped to it)."""

    output: np.ndarray
    bounds: tuple[np.ndarray, np.ndarray] | None = None


@dataclass(frozen=True)
class Bundle:
    root: Path
    models: dict[str, TaskSpec]
    links: tuple[LinkEntry, ...]
    profile: Profile
    manifest: dict[str, Any]
    ensembles: dict[str, EnsembleEntry] = field(default_factory=dict)
    priors: dict[str, Prior] = field(default_factory=dict)  # bundles from before: none

    def links_into(self, target: str) -> list[LinkEntry]:
        return [link for link in self.links if link.target == target]

    def link(self, source: str, target: str) -> LinkEntry | None:
        for entry in self.links:
            if entry.source == source and entry.target == target:
                return entry
        return None

    def path_of(self, entry: LinkEntry) -> Path:
        return safe_relative(self.root, entry.file, f"links[{entry.name}].file")

    def decoder_path_of(self, entry: LinkEntry) -> Path:
        if not entry.decoder:
            raise BundleError(f"links[{entry.name}]: a {entry.architecture} link has no decoder")
        return safe_relative(self.root, entry.decoder, f"links[{entry.name}].decoder")

    def size_of(self, entry: LinkEntry) -> int:
        """Bytes of the link's files (encoder and decoder step for a sequence target)."""
        return sum(safe_relative(self.root, f, entry.name).stat().st_size for f in entry.files)


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


def verify_files(root: Path, files: Any) -> None:
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
            output = str(raw.get("output", ""))
            bag = (BagDecoding(parse_tokens(raw["tokens"]), float(raw["threshold"]))
                   if output == BAG_OUTPUT else None)
            entry = LinkEntry(
                source=str(raw["source"]),
                target=str(raw["target"]),
                file=str(raw["file"]),
                quantization=str(raw.get("quantization", "")),
                ops=tuple(raw.get("ops", ())),
                architecture=str(raw.get("architecture", "vec2vec")),
                decoder=str(raw.get("decoder", "")),
                output=output,
                bag=bag,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{where}: missing or malformed field {exc}") from None
        for role in ("source", "target"):
            if getattr(entry, role) not in models:
                raise BundleError(f"{where}.{role}: unknown model {getattr(entry, role)!r}")
        if entry.bag is not None:
            target = models[entry.target]
            problem = ("a bag link predicts a sequence target" if target.kind != "sequence"
                       else "a bag link has no decoder" if entry.decoder
                       else entry.bag.check(target.vocab_size))
            if problem:
                raise BundleError(f"{where}: {problem}")
        elif (models[entry.target].kind == "sequence") != bool(entry.decoder):
            raise BundleError(f"{where}: a link into a {models[entry.target].kind} target "
                              f"{'needs' if not entry.decoder else 'has no use for'} a decoder")
        entries.append(entry)
    return tuple(entries)


def _parse_ensembles(manifest: dict[str, Any],
                     models: dict[str, TaskSpec]) -> dict[str, EnsembleEntry]:
    ensembles = {}
    for index, raw in enumerate(manifest.get("ensembles", [])):
        where = f"{MANIFEST}: ensembles[{index}]"
        try:
            entry = EnsembleEntry(
                target=str(raw["target"]),
                method=str(raw["method"]),
                sources=tuple(str(s) for s in raw.get("sources", ())),
                weights={str(k): float(v) for k, v in raw.get("weights", {}).items()},
                pooling=str(raw.get("pooling", "mean")),
                min_share=float(raw.get("min_share", 0.0)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BundleError(f"{where}: missing or malformed field {exc}") from None
        if entry.target not in models:
            raise BundleError(f"{where}.target: unknown model {entry.target!r}")
        if entry.pooling not in POOLINGS:
            raise BundleError(f"{where}.pooling: {entry.pooling!r} is not one of "
                              f"{sorted(POOLINGS)}")
        if not 0.0 <= entry.min_share <= 0.05:  # a negligible share: one source always reads
            raise BundleError(f"{where}.min_share: must be in [0, 0.05], got {entry.min_share}")
        bad = [w for w in entry.weights.values() if not (w >= 0.0 and w < float("inf"))]
        if bad:
            raise BundleError(f"{where}.weights: weights must be finite and >= 0, got {bad}")
        ensembles[entry.target] = entry
    return ensembles


def _numbers(raw: Any, width: int, where: str) -> np.ndarray:
    if not isinstance(raw, list) or len(raw) != width:
        raise BundleError(f"{where}: expected a list of {width} numbers")
    try:
        values = [float(v) for v in raw]
    except (TypeError, ValueError):
        raise BundleError(f"{where}: expected numbers, got {raw!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise BundleError(f"{where}: numbers must be finite")
    return np.asarray(values, dtype=np.float32)


def _parse_priors(manifest: dict[str, Any], models: dict[str, TaskSpec]) -> dict[str, Prior]:
    raw_priors = manifest.get("priors", {})
    if not isinstance(raw_priors, dict):
        raise BundleError(f"{MANIFEST}: priors: expected an object by model")
    priors = {}
    for model, raw in raw_priors.items():
        where = f"{MANIFEST}: priors.{model}"
        if model not in models:
            raise BundleError(f"{where}: unknown model {model!r}")
        if not isinstance(raw, dict) or "output" not in raw:
            raise BundleError(f"{where}: expected an object with an 'output'")
        spec = models[model]
        output = _numbers(raw["output"], spec.output_width, f"{where}.output")
        bounds = None
        if "low" in raw or "high" in raw:
            if spec.kind != "regression":
                raise BundleError(f"{where}: only a regression target has a range")
            low = _numbers(raw.get("low"), spec.dim, f"{where}.low")
            high = _numbers(raw.get("high"), spec.dim, f"{where}.high")
            if np.any(low > high):
                raise BundleError(f"{where}: low must not exceed high")
            bounds = (low, high)
        priors[model] = Prior(output, bounds)
    return priors


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
        models = parse_tasks(manifest.get("models"))
    except TaskSpecError as exc:
        raise BundleError(f"{MANIFEST}: {exc}") from None
    links = _parse_links(manifest, models)
    for entry in links:
        for file in entry.files:
            if file not in manifest["files"]:
                raise BundleError(f"{MANIFEST}: link {entry.name} file {file!r} is not listed")
    ensembles = _parse_ensembles(manifest, models)
    priors = _parse_priors(manifest, models)
    profile_file = str(manifest.get("profile", PROFILE))
    profile = Profile.from_dict(
        _read_json(safe_relative(root, profile_file, f"{MANIFEST}: profile"), profile_file)
    )
    log.info("bundle %s: %d models, %d links", root, len(models), len(links))
    return Bundle(root=root, models=models, links=links, profile=profile, manifest=manifest,
                  ensembles=ensembles, priors=priors)


def write_manifest(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Finish a bundle: list every file under `root` with its sha256, write the manifest."""
    files = {
        path.relative_to(root).as_posix(): sha256_file(path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest, "files": files}
    (root / MANIFEST).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n", "utf-8")
    make_readable(root)
    return full


def make_readable(root: Path) -> None:
    """Folders 0755, files 0644: a bundle is data that a service user other than its writer
    (systemd's DynamicUser=) must read after a plain `cp -r`; staging folders made by
    mkdtemp are 0700."""
    root.chmod(0o755)
    for path in root.rglob("*"):
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)


def identity(bundle: Bundle) -> dict[str, str]:
    """What names a bundle in an upload's manifest (docs/mqtt.md, "Uploads"): `name`, its
    folder's name (a pushed bundle's is `<time>-<sha256 prefix>`), and `version`, the first
    16 hex digits of its manifest's sha256 (its files' digests are in the manifest, so two
    bundles with one version are the same files)."""
    return {"name": bundle.root.name, "version": sha256_file(bundle.root / MANIFEST)[:16]}
