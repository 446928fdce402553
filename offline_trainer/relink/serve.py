"""`mlink-train serve`: the worker's command line, and its parts put together."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from pathlib import Path

from fleet.cli import add_rollout_options, rollout_policy
from fleet.link import FleetLink
from links_tflite.bundle import BundleError, load_bundle
from offline_trainer.links import LinkTraining
from offline_trainer.relink.collector import UploadCollector
from offline_trainer.relink.link import TrainerLink
from offline_trainer.relink.relinker import Relinker
from offline_trainer.relink.rollout import GroupRollout
from offline_trainer.relink.store import WorkDir
from offline_trainer.relink.worker import Worker, print_result

log = logging.getLogger(__name__)


def broker_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"HOST:PORT is needed, got {text!r}")
    return host, int(port)


def add_arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--broker", type=broker_address, required=True, metavar="HOST:PORT")
    serve.add_argument("--username")
    serve.add_argument("--password")
    serve.add_argument("--prefix", default="mlink")
    serve.add_argument("--group", required=True, help="the group whose links this relinks")
    serve.add_argument("--bundle", type=Path, required=True,
                       help="the group's bundle in force (until a rollout from the workdir)")
    serve.add_argument("--workdir", type=Path, required=True,
                       help="recordings and bundles; workers of one share may share it")
    serve.add_argument("--share", default="mlink-trainers",
                       help="the shared subscription's name (one per group of workers)")
    serve.add_argument("--client-id", default=f"mlink-trainer-{socket.gethostname()}",
                       help="fixed per worker: its session keeps its jobs across restarts")
    serve.add_argument("--session-expiry", type=int, default=3600,
                       help="seconds the broker keeps the worker's jobs while it is away")
    serve.add_argument("--min-rows", type=int, default=1000,
                       help="rows the group's recordings must hold to relink")
    serve.add_argument("--max-rows", type=int, default=200_000,
                       help="at most this many rows relinked on, the newest")
    serve.add_argument("--margin", type=float, default=0.01,
                       help="by how much the new bundle's figure must beat the one in force")
    serve.add_argument("--holdout", type=float, default=0.3,
                       help="the newest share of the rows, held out to judge both bundles")
    serve.add_argument("--all-new", action="store_true",
                       help="take every new link; by default, per target, the links in force "
                            "are kept where they serve it better on the validation slice")
    serve.add_argument("--epochs", type=int, default=LinkTraining.epochs)
    serve.add_argument("--seed", type=int, default=0)
    serve.add_argument("--collect-timeout", type=float, default=30.0,
                       help="seconds for an upload's chunks to come whole")
    serve.add_argument("--once", action="store_true",
                       help="handle one job of the group, then leave the share and exit")
    serve.add_argument("--max-wait", type=float, default=0.0,
                       help="exit 3 once no job came for this many seconds (0: wait for ever)")
    add_rollout_options(serve)  # the rollout, as `mlink-fleet push`
    serve.add_argument("--settle", type=float, default=1.0,
                       help="seconds to collect the boxes' retained status before a rollout")


def serve(args: argparse.Namespace) -> int:
    try:
        load_bundle(args.bundle)
    except BundleError as exc:
        print(f"mlink-train serve: --bundle: {exc}", file=sys.stderr)
        return 2
    host, port = args.broker
    relinker = Relinker(LinkTraining(epochs=args.epochs, seed=args.seed), args.min_rows,
                        args.holdout, args.margin, args.max_rows,
                        per_target=not args.all_new)  # ValueError: exit 2
    policy = rollout_policy(args)
    rollout = GroupRollout(
        lambda: FleetLink(host, port, args.prefix, args.username, args.password), policy,
        args.settle, progress=lambda line: print(line, file=sys.stderr, flush=True))
    try:
        link = TrainerLink(host, port, args.prefix, args.share, args.client_id, args.username,
                           args.password, args.session_expiry)
    except (ConnectionError, OSError) as exc:
        print(f"mlink-train serve: {exc}", file=sys.stderr)
        return 2
    workdir = WorkDir(args.workdir, args.bundle)
    print(f"worker {args.client_id}: taking jobs of group {args.group} on "
          f"$share/{args.share}/{link.job_topic}", file=sys.stderr, flush=True)
    worker = Worker(args.client_id, args.group, link,
                    UploadCollector(link, workdir, args.collect_timeout), relinker, rollout,
                    workdir, report=print_result)
    try:
        return worker.run(once=args.once, max_wait_s=args.max_wait)
    except KeyboardInterrupt:
        return 0
    finally:
        link.close(end_session=args.once)
