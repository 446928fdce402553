"""The agent loop: measure costs, select the activated models, then per frame run them and
predict the others through the link ensembles, publishing every model's output."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from agent.config import AgentConfig, ConfigError
from agent.costs import Cost, median_delay_ms, memory_delta_mb, rss_bytes
from agent.models import ModelAdapter, make_model
from agent.publisher import Publisher
from agent.selection import Problem, Selection, get_policy
from agent.sources import Frame, Source, open_source
from links_tflite.bundle import Bundle, LinkEntry, load_bundle
from links_tflite.ensemble import EnsemblePredictor, LinkRunner, open_link
from links_tflite.interpreter import TFLiteRunner
from links_tflite.tasks import decode

log = logging.getLogger(__name__)

STATUS_EVERY_S = 5.0


@dataclass
class Counters:
    frames: int = 0
    executed: int = 0
    predicted: int = 0
    model_errors: int = 0
    started: float = field(default_factory=time.monotonic)

    def fps(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.frames / elapsed if elapsed > 0 else 0.0


def check_models_in_bundle(config: AgentConfig, bundle: Bundle) -> None:
    """Every configured model is one the bundle links, with the task the bundle expects."""
    errors = []
    for i, model in enumerate(config.models):
        if model.id not in bundle.models:
            errors.append((f"models.{i}.id", f"model {model.id!r} is not in the bundle at "
                           f"{bundle.root} (it has {', '.join(sorted(bundle.models))})"))
        elif model.task is not None and model.task.spec() != bundle.models[model.id]:
            errors.append((f"models.{i}.task", f"differs from the bundle's task for {model.id!r}"
                           f": {bundle.models[model.id].to_dict()}"))
    if errors:
        raise ConfigError(errors)


def measure_link(bundle: Bundle, link: LinkEntry, example: np.ndarray, warmup: int,
                 runs: int) -> Cost:
    """A link's memory and delay, measured by loading it alone and running it (a sequence
    link: its encoder, decoder step and the host's greedy decoding loop)."""
    loaded: list[LinkRunner] = []

    def load() -> None:
        loaded.append(open_link(bundle, link))
        loaded[0].run_one(example)

    memory = memory_delta_mb(load)
    return Cost(memory, median_delay_ms(lambda: loaded[0].run_one(example), warmup, runs))


class Agent:
    def __init__(self, config: AgentConfig, publisher: Publisher | None = None) -> None:
        self.config = config
        self.bundle = load_bundle(config.bundle.path)
        check_models_in_bundle(config, self.bundle)
        self.models: dict[str, ModelAdapter] = {m.id: make_model(m) for m in config.enabled_models}
        self.source: Source = open_source(config.source)
        missing = {m.input_modality for m in self.models.values()} - set(self.source.modalities)
        if missing:
            raise ConfigError([("models", f"inputs {sorted(missing)} not offered by the source "
                                          f"(it has {list(self.source.modalities)})")])
        self.ensembles = EnsemblePredictor(self.bundle)
        self.publisher = publisher
        self.counters = Counters()
        self.model_costs: dict[str, Cost] = {}
        self.link_costs: dict[tuple[str, str], Cost] = {}
        self.selection: Selection | None = None
        self.stop_event = threading.Event()
        self._seq = itertools.count(1)

    # -- measuring -------------------------------------------------------------------------
    def measure(self, frame: Frame) -> None:
        """Measure every enabled model and every usable link on this box, on a real frame."""
        warmup, runs = self.config.profiling.warmup_runs, self.config.profiling.delay_runs
        outputs: dict[str, np.ndarray] = {}
        runtime_warmup = self._initialise_runtime()
        for model_id, model in self.models.items():
            example = frame.modalities[model.input_modality]
            memory = memory_delta_mb(lambda m=model, x=example: (m.load(), m.infer(x)))
            outputs[model_id] = model.infer(example)
            delay = median_delay_ms(lambda m=model, x=example: m.infer(x), warmup, runs)
            self.model_costs[model_id] = Cost(memory, delay)
        for link in self.bundle.links:
            if link.source in self.models and link.target in self.models:
                self.link_costs[(link.source, link.target)] = measure_link(
                    self.bundle, link, outputs[link.source], warmup, runs
                )
        del runtime_warmup
        log.info("model costs: %s", {k: v.to_dict() for k, v in self.model_costs.items()})

    def _initialise_runtime(self) -> TFLiteRunner | None:
        """Load the smallest link once, so that the runtime's own one-off allocations are not
        charged to whichever model happens to be measured first."""
        single_file = [link for link in self.bundle.links if not link.decoder]
        if not single_file:
            return None
        smallest = min(single_file, key=lambda link: self.bundle.path_of(link).stat().st_size)
        return TFLiteRunner(self.bundle.path_of(smallest))

    def problem(self) -> Problem:
        budget = {r: v for r, v in self.config.budget.model_dump().items() if v is not None}
        return Problem(
            models=tuple(self.models),
            model_costs=self.model_costs,
            link_costs=self.link_costs,
            profile=self.bundle.profile,
            budget=budget,
        )

    def select(self) -> Selection:
        selection = get_policy(self.config.selection.policy).select(self.problem())
        log.info("selected %s: active %s, predicted %s, use %s, expected agreement %.3f",
                 selection.policy, sorted(selection.active), list(selection.predicted),
                 selection.use, selection.expected_agreement)
        return selection

    def apply(self, selection: Selection) -> None:
        """Load the activated models and the links they feed; unload everything else."""
        for model_id, model in self.models.items():
            if model_id in selection.active:
                model.load()
            else:
                model.unload()
        targets = selection.predicted if selection.uses_links else ()
        self.ensembles.prepare(selection.active, targets)
        self.selection = selection

    # -- per frame -------------------------------------------------------------------------
    def _payload(self, frame: Frame, model_id: str, value: np.ndarray, provenance: str,
                 sources: list[str], est_agreement: float, latency_ms: float) -> dict[str, object]:
        return {
            "frame_id": frame.frame_id,
            "ts": frame.ts,
            "model": model_id,
            "value": [float(v) for v in np.asarray(value).reshape(-1)],
            "decoded": decode(self.bundle.models[model_id], value),
            "provenance": provenance,
            "sources": sources,
            "est_agreement": est_agreement,
            "latency_ms": latency_ms,
            "seq": next(self._seq),
        }

    def process(self, frame: Frame) -> list[dict[str, object]]:
        assert self.selection is not None
        payloads, outputs = [], {}
        for model_id in sorted(self.selection.active):
            model = self.models[model_id]
            start = time.perf_counter()
            try:
                value = model.infer(frame.modalities[model.input_modality])
            except Exception:
                self.counters.model_errors += 1
                log.exception("model %s failed on frame %s", model_id, frame.frame_id)
                continue
            outputs[model_id] = value
            latency = (time.perf_counter() - start) * 1e3
            payloads.append(self._payload(frame, model_id, value, "executed", [model_id], 1.0,
                                          latency))
        if self.selection.uses_links and outputs:
            for target in self.selection.predicted:
                start = time.perf_counter()
                try:
                    prediction = self.ensembles.predict(target, outputs)
                except LookupError as exc:
                    log.debug("frame %s: %s", frame.frame_id, exc)
                    continue
                latency = (time.perf_counter() - start) * 1e3
                payloads.append(self._payload(frame, target, prediction.value, "predicted",
                                              list(prediction.sources),
                                              prediction.est_agreement, latency))
        self.counters.executed += sum(p["provenance"] == "executed" for p in payloads)
        self.counters.predicted += sum(p["provenance"] == "predicted" for p in payloads)
        return payloads

    # -- reporting -------------------------------------------------------------------------
    def status(self, state: str) -> dict[str, object]:
        rss = rss_bytes()
        return {
            "state": state,
            "selection": self.selection.to_dict() if self.selection else None,
            "budget": self.problem().budget,
            "costs": {
                "models": {k: v.to_dict() for k, v in self.model_costs.items()},
                "links": {f"{s}->{t}": v.to_dict() for (s, t), v in self.link_costs.items()},
                "probe": "psutil_rss",
            },
            "frames": self.counters.frames,
            "fps": round(self.counters.fps(), 3),
            "rss_mb": None if rss is None else round(rss / (1024 * 1024), 3),
            "counters": {
                "executed": self.counters.executed,
                "predicted": self.counters.predicted,
                "model_errors": self.counters.model_errors,
                "published": self.publisher.published if self.publisher else 0,
            },
            "outbox_depth": self.publisher.pending if self.publisher else 0,
        }

    def publish_status(self, state: str) -> None:
        if self.publisher:
            self.publisher.publish(self.publisher.topics.status, self.status(state), qos=1,
                                   retain=True)

    # -- the loop --------------------------------------------------------------------------
    def start(self) -> Iterator[Frame]:
        """Measure and select on the first frame; return the stream including that frame."""
        frames = self.source.frames()
        first = next(frames, None)
        if first is None:
            raise RuntimeError(f"source {self.config.source.type!r} yielded no frame")
        self.measure(first)
        self.apply(self.select())
        return itertools.chain([first], frames)

    def run(self, max_frames: int | None = None) -> Counters:
        frames = self.start()
        limit = max_frames or self.config.max_frames
        self.counters = Counters()
        self.publish_status("running")
        last_status = time.monotonic()
        for frame in frames:
            if self.stop_event.is_set():
                break
            for payload in self.process(frame):
                if self.publisher:
                    self.publisher.publish(self.publisher.topics.output(str(payload["model"])),
                                           payload)
            self.counters.frames += 1
            if time.monotonic() - last_status > STATUS_EVERY_S:
                self.publish_status("running")
                last_status = time.monotonic()
            if limit is not None and self.counters.frames >= limit:
                break
        self.publish_status("stopped")
        return self.counters
