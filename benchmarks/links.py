"""Links benchmark on the digits workload: how good, how small, how fast.

Builds the digits zoo and recording (cached under build/bench/digits), trains a bundle at 5%
and at 48% of the recording (the paper's smallest and largest useful fractions), and reports,
all on held-out frames through the exported files and LiteRT:
- the pairwise agreement matrix p_j(g_ij) at both fractions, side by side;
- int8 vs float agreement per link (the float Keras link against the int8 file);
- the ensembles' per-subset agreement beside the best single link of each subset;
- the bundle size and the median single-frame link delay in microseconds.
The digits sequence models (name, roman) make the sequence links part of the matrix; a second,
small section does the same on the synthetic spelling recording of the tests.
Writes benchmarks/results/links.md and prints the same tables.

Run: .venv/bin/python benchmarks/links.py [--epochs N] [--work DIR]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from links_tflite.bundle import link_name, load_bundle  # noqa: E402
from offline_trainer.links import LinkTraining  # noqa: E402
from offline_trainer.train_links import TrainReport, train_bundle_report  # noqa: E402
from offline_trainer.zoo import build_zoo  # noqa: E402
from tests.synthetic import make_recording  # noqa: E402

log = logging.getLogger("benchmarks.links")

FRACTIONS = (0.05, 0.48)
RESULTS = ROOT / "benchmarks" / "results" / "links.md"


def bundle_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def pairwise_table(reports: dict[float, TrainReport]) -> list[str]:
    low, high = (reports[f] for f in FRACTIONS)
    models = list(low.profile.pairwise)
    head = " | ".join(f"from {m}" for m in models)
    lines = [f"| target \\ source (5% -> 48%) | {head} |", "|---" * (len(models) + 1) + "|"]
    for target in models:
        cells = []
        for source in models:
            if source == target:
                cells.append("1 (executed)")
                continue
            a = low.profile.link_agreement(source, target)
            b = high.profile.link_agreement(source, target)
            cells.append(f"{a:.3f} -> {b:.3f} ({(b - a) * 100:+.1f})")
        lines.append(f"| {target} | " + " | ".join(cells) + " |")
    return lines


def int8_table(reports: dict[float, TrainReport]) -> tuple[list[str], dict[float, float]]:
    lines = ["| fraction | link | architecture | quantization | float | int8 file | "
             "int8 - float (points) | int8 ~ float |", "|---" * 8 + "|"]
    means = {}
    for fraction, report in reports.items():
        diffs = []
        for r in report.links:
            diff = (r.agreement - r.float_agreement) * 100
            diffs.append(diff)
            lines.append(f"| {fraction:.0%} | {link_name(r.source, r.target)} | "
                         f"{r.architecture} | {r.quantization} | {r.float_agreement:.3f} | "
                         f"{r.agreement:.3f} | {diff:+.1f} | {r.int8_vs_float:.3f} |")
        means[fraction] = float(np.mean(diffs))
    return lines, means


def ensemble_table(report: TrainReport) -> list[str]:
    lines = ["| target | active sources | ensemble | best single link | gain (points) | case | "
             "weights |", "|---" * 7 + "|"]
    for target, table in report.profile.ensembles.items():
        weights = ", ".join(f"{s} {w:.2f}" for s, w in sorted(report.weights[target].items()))
        for subset, value in table.items():
            detail = report.profile.subset_details[target][subset]
            lines.append(f"| {target} | {', '.join(sorted(subset))} | {value:.3f} | "
                         f"{detail['best_single']:.3f} | {detail['gain'] * 100:+.1f} | "
                         f"{detail['case']} | {weights} |")
    return lines


def cost_table(reports: dict[float, TrainReport], bundles: dict[float, Path]) -> list[str]:
    lines = ["| fraction | bundle size (KiB) | link | link file (bytes) | median delay (us) |",
             "|---" * 5 + "|"]
    for fraction, report in reports.items():
        size = bundle_bytes(bundles[fraction]) / 1024
        for r in report.links:
            lines.append(f"| {fraction:.0%} | {size:.1f} | {link_name(r.source, r.target)} | "
                         f"{r.size_bytes} | {r.delay_ms * 1000:.1f} |")
    return lines


def sequence_section(work: Path, epochs: int, seed: int) -> list[str]:
    """Sequence links on the synthetic spelling recording, at 48% training data."""
    path = make_recording(n=300, seed=seed, models=("digit", "spelled", "reversed")).save(
        work / "spelling.npz")
    report = train_bundle_report(path, work / "bundle-spelling", 0.48,
                                 LinkTraining(epochs=epochs, seed=seed))
    lines = [f"Synthetic spelling recording (300 frames, 48% for training, {epochs} epochs): "
             "`spelled`/`reversed` are a digit's English name as letter tokens.", "",
             "| link | architecture | quantization (per file) | float | exported | "
             "exported ~ float | bytes | median delay (us) |", "|---" * 8 + "|"]
    for r in report.links:
        parts = ", ".join(f"{k} {v}" for k, v in r.parts.items())
        lines.append(f"| {link_name(r.source, r.target)} | {r.architecture} | {parts} | "
                     f"{r.float_agreement:.3f} | {r.agreement:.3f} | {r.int8_vs_float:.3f} | "
                     f"{r.size_bytes} | {r.delay_ms * 1000:.1f} |")
    return lines


def run(work: Path, epochs: int, seed: int, sequence_epochs: int) -> str:
    started = time.perf_counter()
    build_zoo("digits", work, seed)
    recording = work / "recording.npz"
    reports, bundles = {}, {}
    for fraction in FRACTIONS:
        bundles[fraction] = work / f"bundle-{round(fraction * 100)}"
        reports[fraction] = train_bundle_report(recording, bundles[fraction], fraction,
                                                LinkTraining(epochs=epochs, seed=seed))
        load_bundle(bundles[fraction])  # what was written verifies
    int8_lines, means = int8_table(reports)
    delays = [r.delay_ms * 1000 for r in reports[FRACTIONS[-1]].links]
    high = reports[FRACTIONS[-1]]
    frames = {f: r.profile.held_out_frames for f, r in reports.items()}
    out = [
        "# Links benchmark (digits)",
        "",
        f"Generated by `benchmarks/links.py` (epochs {epochs}, seed {seed}) on "
        f"{platform.machine()} / Python {platform.python_version()}, "
        f"in {time.perf_counter() - started:.0f} s. All figures on held-out recording frames "
        f"({', '.join(f'{f:.0%}: {n} held out' for f, n in frames.items())}), "
        "through the exported files and LiteRT.",
        "",
        "## Summary",
        "",
        *(f"- int8 - float agreement at {f:.0%} training data: {m:+.2f} points on average "
          "over the links (target: within 1 point)" for f, m in means.items()),
        *(f"- bundle size at {f:.0%}: {bundle_bytes(b) / 1024:.1f} KiB" for f, b in
          bundles.items()),
        f"- median link delay at 48% (single frame, LiteRT, 1 thread): "
        f"{np.median(delays):.1f} us (links from {min(delays):.1f} to {max(delays):.1f} us)",
        "",
        "## Pairwise agreement p_j(g_ij): 5% -> 48% of the recording for training",
        "",
        *pairwise_table(reports),
        "",
        "## int8 vs float, per link",
        "",
        *int8_lines,
        "",
        "## Ensembles at 48%: every subset of each target's sources",
        "",
        *ensemble_table(high),
        "",
        "## Sizes and delays",
        "",
        *cost_table(reports, bundles),
        "",
        "## Sequence links",
        "",
        *sequence_section(work, sequence_epochs, seed),
        "",
    ]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench" / "digits")
    parser.add_argument("--epochs", type=int, default=LinkTraining.epochs)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sequence-epochs", type=int, default=40)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    text = run(args.work, args.epochs, args.seed, args.sequence_epochs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
