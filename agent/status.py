"""The retained status (`status` topic): the loop's counters, the agent's own time, and the
sections each part reports (models, profiling, sources, publishing), put together in one
small message, every few seconds. The measured costs of models and links, which are most of
the bytes and move slowly, go on their own retained topic, `status/costs`, published only
when a figure moved (`CostsReport`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from agent.costs import rss_bytes


@dataclass
class Counters:
    frames: int = 0
    executed: int = 0
    predicted: int = 0
    prior: int = 0  # outputs served by the bundle's prior
    reused: int = 0  # a plan's `run/p` model between its runs: its last exact output
    reuse_fallbacks: int = 0  # ... where that was too old (or missing): its prior instead
    no_output: int = 0  # models given no output on a frame (a plan's `none`, nothing fits)
    gated: int = 0  # predicted, then run by the confidence gate
    model_errors: int = 0
    timeouts: int = 0
    frame_errors: int = 0
    reselections: int = 0
    frames_skipped: int = 0  # back-pressure: not processed, their outputs could not be kept
    started: float = field(default_factory=time.monotonic)

    def fps(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.frames / elapsed if elapsed > 0 else 0.0


@dataclass
class Overhead:
    """The agent's own time, measured on the box: the loop's wall time (processing frames and
    publishing their outputs) less the executed models' inference. The target is under 5%
    of the models' time; this is how a box shows whether it holds there."""

    frames: int = 0
    loop_ms: float = 0.0  # in `process`
    models_ms: float = 0.0  # the executed models' inference, inside loop_ms
    publish_ms: float = 0.0  # handing the outputs to the publisher (`run`)

    def to_dict(self) -> dict[str, float | int | None]:
        n = max(self.frames, 1)
        agent_ms = self.loop_ms + self.publish_ms - self.models_ms
        return {
            "frames": self.frames,
            "models_ms_per_frame": round(self.models_ms / n, 4),
            "agent_ms_per_frame": round(agent_ms / n, 4),
            "share_of_models": round(agent_ms / self.models_ms, 4) if self.models_ms else None,
        }


class OutboxView(Protocol):
    @property
    def dropped(self) -> int: ...

    def stats(self) -> dict[str, Any]: ...


class PublisherView(Protocol):
    """What the status reads of the publisher."""

    @property
    def published(self) -> int: ...

    @property
    def pending(self) -> int: ...

    @property
    def outbox(self) -> OutboxView | None: ...

    def health(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Sections:
    """What the parts report: each section made by the part that owns the figures."""

    selection: dict[str, object] | None
    budget: dict[str, float]
    models: dict[str, dict[str, object]]
    profiling: dict[str, object]
    # per camera (feed) name, what its source counted (agent.sources: Source.stats)
    sources: dict[str, dict[str, int]] = field(default_factory=dict)
    # outputs the publishing rules withheld or left out, by reason and model
    # (agent.publishrules: PublishRules.counts)
    publishing: dict[str, dict[str, int]] = field(default_factory=dict)


class StatusBuilder:
    """Puts the parts' sections, the counters and the outbox into one status message.
    `extras` are further sections by name from parts the agent does not hold (the service
    registers the control's request counters), read when a status is built."""

    def __init__(self) -> None:
        self.extras: dict[str, Callable[[], object]] = {}
        self.costs = CostsReport()  # what `status/costs` last said

    def build(self, state: str, sections: Sections, counters: Counters, overhead: Overhead,
              publisher: PublisherView | None, *, config_version: int, bundle: Path,
              measured_at: float | None) -> dict[str, object]:
        rss = rss_bytes()
        outbox = publisher.outbox if publisher is not None else None
        counts: dict[str, object] = {
            "executed": counters.executed,
            "predicted": counters.predicted,
            "prior": counters.prior,
            "reused": counters.reused,
            "reuse_fallbacks": counters.reuse_fallbacks,
            "no_output": counters.no_output,
            "gated": counters.gated,
            "model_errors": counters.model_errors,
            "timeouts": counters.timeouts,
            "frame_errors": counters.frame_errors,
            "reselections": counters.reselections,
            "frames_skipped": counters.frames_skipped,
            "published": publisher.published if publisher else 0,
        }
        if outbox is not None:
            counts["outbox_dropped"] = outbox.dropped
        for reason, by_model in sections.publishing.items():
            counts[f"publish_{reason}"] = sum(by_model.values())
        return {
            "state": state,
            "selection": sections.selection,
            "budget": sections.budget,
            "models": sections.models,
            "profiling": sections.profiling,
            "frames": counters.frames,
            "fps": round(counters.fps(), 3),
            "rss_mb": None if rss is None else round(rss / (1024 * 1024), 3),
            "overhead": overhead.to_dict(),
            "counters": counts,
            "outbox_depth": publisher.pending if publisher else 0,
            "outbox": outbox.stats() if outbox is not None else None,
            "profile_age_s": None if measured_at is None
            else round(time.monotonic() - measured_at, 3),
            "config_version": config_version,
            "bundle": str(bundle),
            "delivery": publisher.health() if publisher is not None else None,
            "sources": sections.sources,
            "publishing": sections.publishing,
            **{name: section() for name, section in self.extras.items()},
        }


# A cost figure has moved when it differs from the one last published by more than this
# share of it and by more than its floor. The delay compared is the median over the recent
# runs (what the selection reads, agent.costs.CostStats), which stays within a few percent
# between statuses on a busy box.
COSTS_RELATIVE_CHANGE = 0.2
COSTS_FLOOR = {"memory_mb": 0.1, "delay_p50_ms": 0.01}


class CostsReport:
    """The retained `status/costs` message: every model's and link's measured cost and the
    memory probe, with `ts` (wall clock, epoch s) when it was made. `due(costs)` says whether
    it should be published: the first time, and whenever a model or link came or went, the
    probe changed, or a figure (`memory_mb`, `delay_p50_ms`) moved beyond
    `COSTS_RELATIVE_CHANGE` and its floor since the last one published. Not thread-safe: the
    agent's lock holds."""

    def __init__(self, relative: float = COSTS_RELATIVE_CHANGE) -> None:
        self.relative = relative
        self._last: dict[str, Any] | None = None

    def due(self, costs: dict[str, Any]) -> bool:
        if self._last is not None and not self._moved(self._last, costs):
            return False
        self._last = costs
        return True

    def _moved(self, before: dict[str, Any], after: dict[str, Any]) -> bool:
        if before.get("probe") != after.get("probe"):
            return True
        for part in ("models", "links"):
            old, new = before.get(part, {}), after.get(part, {})
            if old.keys() != new.keys():
                return True
            for name, figures in new.items():
                for figure, floor in COSTS_FLOOR.items():
                    if self._differs(old[name].get(figure), figures.get(figure), floor):
                        return True
        return False

    def _differs(self, old: float | None, new: float | None, floor: float) -> bool:
        if old is None or new is None:
            return old is not new
        change = abs(new - old)
        return change > floor and change > self.relative * abs(old)

    @staticmethod
    def message(costs: dict[str, Any]) -> dict[str, Any]:
        return {**costs, "ts": round(time.time(), 3)}
