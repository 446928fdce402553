"""How well the confidence gate's calibrated confidence (agent/gate.py) predicts agreement: a
reliability diagram on a build's stream, through the agent's own parts.

    .venv/bin/python benchmarks/gate_calibration.py --build /work/build-city-edge
        # -> benchmarks/results/gate-calibration.md (+ evaluation/gate-calibration.png)

`--build` is an `mlink-train evaluate` folder (its `zoo/` and `bundle/`; the city edge build:
`mlink-train evaluate --workload city --model-size edge --out DIR`). No model runs: the
stream's recording holds every model's exact output on every frame, and the predictions are
the agent's (`EnsemblePredictor.predict`, the bundle's links, LiteRT) from those outputs.

For each target with links, two source sets: every model linked into it (a plan running them
all), and the one source whose link agrees best in the bundle's profile (a plan running one
model; the only set of a target with one link). The stream
is cut as the evaluation cuts it: the first quarter (the profiling part) calibrates the gate
as its profiling windows do (`Calibration.add`: each prediction's raw confidence beside its
agreement with the exact output); on the rest (held out) every prediction's calibrated
confidence (`Calibration.confidence`, the figure the gate ranks by and publishes) is set
against the agreement it turned out to have. Bins: `BINS` equal bins of confidence; per bin
the count, the mean confidence and the mean observed agreement; the expected calibration
error ECE = sum over bins of (count / N) x |mean confidence - observed agreement|. Beside it,
the ECE of two uncalibrated figures: the raw confidence read as a probability (targets with
one), and the profile's figure every prediction carries without the gate (`est_agreement`).
"""

from __future__ import annotations

import argparse
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.gate import Calibration, raw_confidence
from links_tflite.agreement import mean_agreement
from links_tflite.bundle import Bundle, load_bundle
from links_tflite.ensemble import EnsemblePredictor
from links_tflite.recording import Recording

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "gate-calibration.md"
BINS = 10
CALIBRATION_SHARE = 0.25  # the evaluation's profiling part (EvaluationSettings)


@dataclass
class Pairs:
    """Held-out predictions of one (target, sources): confidences and observed agreement."""

    target: str
    sources: tuple[str, ...]
    calibrated: np.ndarray
    raw: np.ndarray | None  # None: the target's kind has no raw confidence
    profile: np.ndarray
    agreement: np.ndarray
    calibration_pairs: int


def predictions(bundle: Bundle, recording: Recording, target: str, sources: tuple[str, ...],
                cut: int) -> Pairs:
    ensembles = EnsemblePredictor(bundle)
    ensembles.prepare(sources, [target])
    spec = bundle.models[target]
    calibration = Calibration()
    rows = []
    for i in range(len(recording)):
        prediction = ensembles.predict(target, {s: recording.outputs[s][i] for s in sources})
        exact = recording.outputs[target][i]
        score = raw_confidence(spec, prediction.value)
        agreed = mean_agreement(spec, np.asarray(prediction.value)[None], exact[None])
        if i < cut:
            calibration.add(target, score, agreed)
        else:
            rows.append((calibration.confidence(target, score, prediction.est_agreement),
                         score, prediction.est_agreement, agreed))
    calibrated, raw, profile, agreement = zip(*rows, strict=True)
    return Pairs(target, sources, np.array(calibrated),
                 None if any(r is None for r in raw) else np.array(raw, dtype=np.float64),
                 np.array(profile), np.array(agreement), cut)


def bins(confidence: np.ndarray, agreement: np.ndarray) -> list[tuple[int, float, float]]:
    """(count, mean confidence, observed agreement) per equal bin of [0, 1]."""
    where = np.minimum((np.clip(confidence, 0.0, 1.0) * BINS).astype(int), BINS - 1)
    return [(int((where == b).sum()),
             float(confidence[where == b].mean()) if (where == b).any() else float("nan"),
             float(agreement[where == b].mean()) if (where == b).any() else float("nan"))
            for b in range(BINS)]


def brier(confidence: np.ndarray, agreement: np.ndarray) -> float:
    """Mean squared gap: lower where the confidence also tells predictions apart."""
    return float(np.mean((confidence - agreement) ** 2))


def ece(confidence: np.ndarray, agreement: np.ndarray) -> float:
    n = len(confidence)
    return sum(count / n * abs(c - a) for count, c, a in bins(confidence, agreement) if count)


def source_sets(bundle: Bundle, target: str, models: list[str]) -> list[tuple[str, ...]]:
    linked = sorted(link.source for link in bundle.links_into(target) if link.source in models)
    if not linked:
        return []
    best = max(linked, key=lambda s: (bundle.profile.link_agreement(s, target), s))
    return [tuple(linked)] + ([(best,)] if len(linked) > 1 else [])


def plot(groups: dict[str, list[Pairs]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4.2), sharey=True)
    for ax, (name, pairs) in zip(np.atleast_1d(axes), groups.items(), strict=True):
        confidence = np.concatenate([p.calibrated for p in pairs])
        agreement = np.concatenate([p.agreement for p in pairs])
        table = [(c, m, a) for c, m, a in bins(confidence, agreement) if c]
        centres = [(i + 0.5) / BINS for i, (c, _, _) in enumerate(bins(confidence, agreement))
                   if c]
        ax.bar(centres, [a for _, _, a in table], width=0.9 / BINS, alpha=0.6,
               label="observed agreement")
        ax.plot([m for _, m, _ in table], [a for _, _, a in table], "o", color="black",
                label="at the bin's mean confidence")
        ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="calibrated confidence",
               title=f"{name}: ECE {ece(confidence, agreement):.3f}")
        ax.legend(fontsize=7, loc="upper left")
    np.atleast_1d(axes)[0].set(ylabel="observed agreement (held-out frames)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    bundle = load_bundle(args.build / "bundle")
    stream = args.build / "zoo" / "stream.npz"  # an evaluation's build; a zoo's own: beside
    recording = Recording.load(stream if stream.is_file() else args.build / "stream.npz")
    models = [m for m in bundle.models if m in recording.outputs]
    cut = max(1, round(len(recording) * CALIBRATION_SHARE))
    groups: dict[str, list[Pairs]] = {"every linked source": [], "the best single link": []}
    for target in models:
        for sources in source_sets(bundle, target, models):
            pairs = predictions(bundle, recording, target, sources, cut)
            groups["every linked source" if len(sources) > 1
                   else "the best single link"].append(pairs)
    groups = {k: v for k, v in groups.items() if v}
    png = args.out.parent / "evaluation" / "gate-calibration.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    plot(groups, png)
    held_out = len(recording) - cut
    lines = ["# The gate's calibrated confidence: reliability", "",
             f"`.venv/bin/python benchmarks/gate_calibration.py --build {args.build}` on "
             f"{platform.machine()}, Python {platform.python_version()}. Build: "
             f"{args.build.name} (models {', '.join(models)}); stream {len(recording)} frames: "
             f"the first {cut} calibrate, the other {held_out} are held out. What is measured "
             "how: benchmarks/gate_calibration.py's docstring.", "",
             "## Per target", "",
             "*agreement*: the predictions' mean observed agreement on the held-out frames. "
             "ECE of the calibrated confidence, of the raw confidence read as a probability "
             "(single- and multi-label targets only), and of the profile's figure "
             "(`est_agreement`, one value per source set). A constant figure can have a low "
             "ECE and still tell no prediction from another, which is what the gate ranks "
             "by: the Brier score (mean squared gap) is lower where the confidence also "
             "separates the predictions that agree from those that do not.", "",
             "| target | kind | sources | agreement | ECE calibrated | ECE raw | ECE profile "
             "| Brier calibrated | Brier profile |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for pairs in (p for group in groups.values() for p in group):
        kind = bundle.models[pairs.target].kind
        raw = "-" if pairs.raw is None else f"{ece(pairs.raw, pairs.agreement):.3f}"
        lines.append(f"| {pairs.target} | {kind} | {', '.join(pairs.sources)} | "
                     f"{pairs.agreement.mean():.3f} | "
                     f"{ece(pairs.calibrated, pairs.agreement):.3f} | {raw} | "
                     f"{ece(pairs.profile, pairs.agreement):.3f} | "
                     f"{brier(pairs.calibrated, pairs.agreement):.4f} | "
                     f"{brier(pairs.profile, pairs.agreement):.4f} |")
    diagrams = [(f"sources = {name}, every target pooled", group)
                for name, group in groups.items()]
    diagrams += [(f"{p.target} from {', '.join(p.sources)} (a raw confidence: its kind says "
                  "how sure a prediction is)", [p])
                 for group in groups.values() for p in group if p.raw is not None]
    for title, group in diagrams:
        confidence = np.concatenate([p.calibrated for p in group])
        agreement = np.concatenate([p.agreement for p in group])
        profile = np.concatenate([p.profile for p in group])
        lines += ["", f"## Reliability diagram: {title}", "",
                  f"{len(confidence)} held-out predictions; ECE calibrated "
                  f"{ece(confidence, agreement):.3f}, profile's figure "
                  f"{ece(profile, agreement):.3f}; Brier calibrated "
                  f"{brier(confidence, agreement):.4f}, profile's figure "
                  f"{brier(profile, agreement):.4f}.", "",
                  "| confidence bin | count | mean confidence | observed agreement | gap |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for b, (count, mean, observed) in enumerate(bins(confidence, agreement)):
            cells = (f"{mean:.3f} | {observed:.3f} | {observed - mean:+.3f}" if count
                     else "- | - | -")
            lines.append(f"| [{b / BINS:.1f}, {(b + 1) / BINS:.1f}) | {count} | {cells} |")
    every = [p for group in groups.values() for p in group]
    flat = sorted({p.target for p in every if p.raw is None})
    ranked = [p for p in every if p.raw is not None]
    lines += ["", "## Reading", "",
              f"- Targets whose kind gives no raw confidence ({', '.join(flat) or 'none'}): "
              "their calibrated confidence is one figure per target and source set, the "
              "observed agreement of the calibration pairs; well calibrated on average, it "
              "ranks a target's predictions against other targets', never one frame against "
              "another. Only the others' confidence moves from frame to frame: " + "; ".join(
                  f"{p.target} from {', '.join(p.sources)}: calibrated confidence "
                  f"{p.calibrated.min():.3f}-{p.calibrated.max():.3f}, the worst bin "
                  f"{max(abs(a - m) for c, m, a in bins(p.calibrated, p.agreement) if c):.3f} "
                  "from its observed agreement" for p in ranked) + ".",
              "- The raw confidence is no probability (ECE raw above): the calibration is "
              "what makes it one. Bins of raw confidence that the calibration part fills with "
              "fewer than 5 pairs do not count, so predictions rarer than that there are "
              "given their neighbours' figure: the low-confidence tail is where the gaps are.",
              "", f"![reliability diagram](evaluation/{png.name})", ""]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
