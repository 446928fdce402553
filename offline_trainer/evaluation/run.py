"""`mlink-train evaluate`: zoo -> bundle -> links by training fraction -> the methods on the
stream -> overhead, for one workload, reusing what is up to date."""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from agent.costs import Cost
from agent.scheduler import Agent
from links_tflite.bundle import Profile, link_name, load_bundle, sha256_file
from links_tflite.recording import Recording
from offline_trainer.evaluation.actions import ActionFigures
from offline_trainer.evaluation.fractions import fraction_table
from offline_trainer.evaluation.methods import METHODS, Ceiling, Evaluator, MethodResult
from offline_trainer.evaluation.stream import evaluation_config, load_stream, reuse_agreement
from offline_trainer.links import LinkTraining
from offline_trainer.train_links import train_bundle_report
from offline_trainer.workloads import get_workload
from offline_trainer.zoo import build_zoo

log = logging.getLogger(__name__)

RESOURCES = ("memory_mb", "delay_ms")
# Bumped when link training changes what it produces, so that cached bundles and fraction
# tables are retrained (2: localization links learn presence + box, boxes pooled by a vote).
TRAINER_VERSION = 2
CURVE_SHARES = tuple(round(0.1 * i, 1) for i in range(1, 11))
SHARES = (1 / 6, 1 / 3, 1 / 2, 2 / 3)  # the budgets of issue 20, for both resources


@dataclass(frozen=True)
class EvaluationSettings:
    workload: str
    out: Path  # build directory: zoo/, recording.npz, bundle/, fractions.json
    results: Path  # the markdown results file; plots go beside it
    models: tuple[str, ...] = ()  # default: every model of the workload
    fractions: tuple[float, ...] = (0.01, 0.05, 0.10, 0.20, 0.48)
    shares: tuple[float, ...] = SHARES
    curve_shares: tuple[float, ...] = ()  # memory shares of the finer curve (CURVE_SHARES)
    epochs: int = LinkTraining.epochs
    seed: int = 0
    frames: int = 0  # stream frames used (0: all)
    calibration_share: float = 0.25
    rss_frames: int = 200  # 0: skip the LiteRT vs TensorFlow memory comparison
    zoo: Path | None = None  # default: out / "zoo"
    model_size: str = ""  # the workload's model size (city: small, edge); "": its default

    @property
    def zoo_dir(self) -> Path:
        return self.zoo or self.out / "zoo"


@dataclass
class Evaluation:
    settings: EvaluationSettings
    models: tuple[str, ...]
    recording_frames: int
    fractions: dict[float, dict[str, float]]
    profile: Profile
    model_costs: dict[str, Cost]
    link_costs: dict[tuple[str, str], Cost]
    probe: str
    stream_frames: tuple[int, int]  # calibration, test
    reuse_agreement: float  # the previous frame's exact outputs vs the frame's (test frames)
    table: list[MethodResult]
    curve: list[MethodResult]
    ceilings: list[Ceiling]
    offline: list[MethodResult]  # the offline plan at each budget of `table`
    profiled: ActionFigures  # per-action agreements on the profiling part (the offline plan's)
    tested: ActionFigures  # ... and on the test part (the ceiling's)
    stream_priors: dict[str, float]  # the plan window's stream priors kept: their figure there
    rss: list[dict[str, object]] = field(default_factory=list)
    machine: str = field(default_factory=lambda: (
        f"{platform.machine()}, {platform.platform()}, Python {platform.python_version()}"))


def ensure_bundle(settings: EvaluationSettings, recording: Path, models: tuple[str, ...]
                  ) -> tuple[Path, dict[str, object]]:
    """The bundle trained on the largest fraction; retrained only when what it was trained
    from (recording, models, epochs, seed, fraction) changed."""
    bundle = settings.out / "bundle"
    stamp: dict[str, object] = {
        "trainer": TRAINER_VERSION,
        "recording": sha256_file(recording), "models": list(models),
        "epochs": settings.epochs, "seed": settings.seed, "fraction": max(settings.fractions),
    }
    stamp_file = settings.out / "bundle.json"
    current = (stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp
               and (bundle / "manifest.json").is_file())
    if not current:
        log.info("training the bundle at %.0f%% of the recording", 100 * max(settings.fractions))
        train_bundle_report(recording, bundle, max(settings.fractions),
                            LinkTraining(epochs=settings.epochs, seed=settings.seed))
        stamp_file.write_text(json.dumps(stamp, indent=2) + "\n")
    return bundle, stamp


def measure_rss(settings: EvaluationSettings, bundle: Path, models: tuple[str, ...]
                ) -> list[dict[str, object]]:
    """The agent's RSS in a fresh process, without and with TensorFlow imported."""
    rows = []
    for with_tf in (False, True):
        command = [sys.executable, "-m", "offline_trainer.evaluation.rss_probe",
                   "--zoo", str(settings.zoo_dir), "--bundle", str(bundle),
                   "--models", ",".join(models), "--frames", str(settings.rss_frames)]
        done = subprocess.run(command + (["--tensorflow"] if with_tf else []),
                              capture_output=True, text=True, timeout=600, check=False,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        if done.returncode != 0:
            raise RuntimeError(f"rss probe failed ({done.returncode}): {done.stderr[-2000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


def evaluate(settings: EvaluationSettings) -> Evaluation:
    settings.out.mkdir(parents=True, exist_ok=True)
    zoo = settings.zoo_dir
    options = {"model_size": settings.model_size} if settings.model_size else {}
    build_zoo(settings.workload, zoo, settings.seed, get_workload(settings.workload, **options))
    full = Recording.load(zoo / "recording.npz")
    models = settings.models or tuple(full.models)
    recording = full.select_models(models)
    recording_path = recording.save(settings.out / "recording.npz")
    bundle, stamp = ensure_bundle(settings, recording_path, models)
    loaded = load_bundle(bundle)
    profile = loaded.profile
    largest = {link_name(s, t): v for t, row in profile.pairwise.items() for s, v in row.items()}
    # links not better than their prior are not shipped; their held-out figure still counts
    largest.update({link_name(d["source"], d["target"]): float(d["held_out_agreement"])
                    for d in loaded.manifest.get("dropped_links", [])})
    fractions = fraction_table(recording, settings.fractions,
                               LinkTraining(epochs=settings.epochs, seed=settings.seed),
                               settings.out / "fractions.json", stamp, largest)

    agent = Agent.from_config(evaluation_config(zoo, bundle, models))
    stream = load_stream(agent.config, models, settings.frames, settings.calibration_share)
    agent.measure(stream.calibration[0])
    evaluator = Evaluator(agent, stream)
    table = [evaluator.method(m, r, s) for r in RESOURCES for s in settings.shares
             for m in METHODS]
    curve = [evaluator.method(m, "memory_mb", s) for s in settings.curve_shares
             for m in METHODS]
    ceilings = [evaluator.ceiling(r, s) for r in RESOURCES for s in settings.shares]
    offline = [evaluator.offline_plan(r, s) for r in RESOURCES for s in settings.shares]
    rss = measure_rss(settings, bundle, models) if settings.rss_frames > 0 else []
    return Evaluation(
        settings=settings, models=models, recording_frames=len(recording),
        fractions=fractions, profile=profile, model_costs=evaluator.costs,
        link_costs=evaluator.problem({}).link_costs, probe=agent.executor.probe.name,
        stream_frames=(len(stream.calibration), len(stream.test)),
        reuse_agreement=reuse_agreement(stream, agent.bundle.models),
        table=table, curve=curve, ceilings=ceilings, offline=offline,
        profiled=evaluator.profiled, tested=evaluator.tested, rss=rss,
        stream_priors={m: f for m, (_, f) in evaluator.stream_priors.items()},
    )
