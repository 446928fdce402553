"""`mlink-train`: build a workload's model zoo, train a bundle of links, relink a fleet's
links on its boxes' uploads (`serve`), or run the demo."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from links_tflite import package_version
from links_tflite.recording import RecordingError
from offline_trainer.links import LinkTraining

log = logging.getLogger("offline_trainer")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlink-train", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    zoo = sub.add_parser("zoo", help="train and export a workload's black-box models")
    zoo.add_argument("--workload", default="digits")
    zoo.add_argument("--out", type=Path, required=True)
    zoo.add_argument("--seed", type=int, default=0)
    zoo.add_argument("--model-size", choices=("small", "edge"), default=None,
                     help="city only: `edge` trains every model at a real edge model's size "
                          "(about 4 ms a frame on one core) for overhead benchmarks")
    links = sub.add_parser("links", help="train, quantize and profile links into a bundle")
    links.add_argument("recording", type=Path)
    links.add_argument("--out", type=Path, required=True)
    links.add_argument("--train-fraction", type=float, default=0.7,
                       help="share of the recording's frames the links train on; the rest "
                            "is held out for the profile (the paper: 0.01 to 0.48)")
    links.add_argument("--epochs", type=int, default=LinkTraining.epochs)
    links.add_argument("--seed", type=int, default=0)
    links.add_argument("--models", default="",
                       help="comma-separated models of the recording to link (default: all)")
    links.add_argument("--keep-all-links", action="store_true",
                       help="ship every link, even those not better than their target's prior "
                            "on the calibration frames (by default they are left out)")
    evaluate = sub.add_parser("evaluate", help="the paper's tables on a workload, side by side "
                                               "with the baselines")
    evaluate.add_argument("--workload", default="digits")
    evaluate.add_argument("--out", type=Path, default=None,
                          help="build directory (default build/eval/WORKLOAD)")
    evaluate.add_argument("--results", type=Path, default=None,
                          help="results file (default benchmarks/results/evaluation-WORKLOAD.md)")
    evaluate.add_argument("--zoo", type=Path, default=None,
                          help="the workload's zoo (default OUT/zoo; built when missing)")
    evaluate.add_argument("--models", default="", help="comma-separated subset of the models")
    evaluate.add_argument("--epochs", type=int, default=LinkTraining.epochs)
    evaluate.add_argument("--frames", type=int, default=0, help="stream frames (0: all)")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--model-size", choices=("small", "edge"), default=None,
                          help="city only: the zoo's model size (`edge`: models of about 4 ms "
                               "a frame on one core, the issue's claims)")
    evaluate.add_argument("--curve", action="store_true",
                          help="also the finer curve over memory shares 0.1 ... 1.0")
    serve = sub.add_parser("serve", help="a relinking worker: the boxes' uploads in, the "
                                         "group's relinked bundle out through a staged rollout")
    from offline_trainer.relink.serve import add_arguments

    add_arguments(serve)
    demo = sub.add_parser("demo", help="train, deploy and run the agent end to end")
    demo.add_argument("--out", type=Path, default=Path("build/demo"))
    return parser


def _evaluate(args: argparse.Namespace, argv: Sequence[str] | None) -> None:
    from offline_trainer.evaluation.report import write_report
    from offline_trainer.evaluation.run import CURVE_SHARES, EvaluationSettings, evaluate

    suffix = f"-{args.model_size}" if args.model_size else ""
    settings = EvaluationSettings(
        workload=args.workload,
        out=args.out or Path("build/eval") / f"{args.workload}{suffix}",
        results=args.results or Path("benchmarks/results") / f"evaluation-{args.workload}.md",
        models=tuple(m for m in args.models.split(",") if m),
        epochs=args.epochs, frames=args.frames, seed=args.seed, zoo=args.zoo,
        model_size=args.model_size or "", curve_shares=CURVE_SHARES if args.curve else (),
    )
    command = " ".join(["mlink-train", *(sys.argv[1:] if argv is None else argv)])
    path = write_report(evaluate(settings), command)
    print(path.read_text())
    print(f"results written to {path}")


def import_tensorflow_quietly() -> None:
    """Import TensorFlow once with the C++ side's stderr silenced: its absl and oneDNN start-up
    lines ("All log messages before absl::InitializeLog()", "oneDNN custom operations are
    on") are written by native code, past Python's logging and TF_CPP_MIN_LOG_LEVEL, into the
    middle of the progress bars. Python errors from the import still surface as exceptions."""
    import sys

    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        import_tensorflow_quietly()
    if not args.verbose:  # TensorFlow's retracing notes (one model per link) are expected
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        if args.command == "zoo":
            from offline_trainer.cards import card_table
            from offline_trainer.workloads import get_workload
            from offline_trainer.zoo import build_zoo

            options = {"model_size": args.model_size} if args.model_size else {}
            build_zoo(args.workload, args.out, args.seed, get_workload(args.workload, **options))
            print(card_table(args.out))
            print(f"zoo written to {args.out}; agent config: {args.out / 'agent.toml'}")
        elif args.command == "links":
            from offline_trainer.train_links import (
                ensemble_summary,
                quantization_summary,
                summary_table,
                train_bundle_report,
            )

            training = LinkTraining(epochs=args.epochs, seed=args.seed)
            models = tuple(m for m in args.models.split(",") if m)
            report = train_bundle_report(args.recording, args.out, args.train_fraction, training,
                                         models, keep_all=args.keep_all_links)
            print(summary_table(report.links, report.dropped))
            print(ensemble_summary(report))
            print(quantization_summary(report.links))
            print(f"bundle written to {args.out} ({report.profile.held_out_frames} held-out "
                  f"frames profiled)")
        elif args.command == "evaluate":
            _evaluate(args, argv)
        elif args.command == "serve":
            from offline_trainer.relink.serve import serve

            return serve(args)
        else:
            from offline_trainer.demo import run_demo

            run_demo(args.out)
    except (RecordingError, ValueError, FileNotFoundError) as exc:
        print(f"mlink-train: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
