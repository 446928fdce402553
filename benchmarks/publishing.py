"""What the publishing path adds per output and per status: `readable` (agent.readable) per
call on every task kind, the publishing rules (agent.publishrules) per frame, and the
retained status's size before and after the costs moved to `status/costs`.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/publishing.py [--write]

Status sizes: on the committed digits fixture (tests/data/digits3: 3 models, 6 links) the
real agent's status after 10 frames; "before" is the same status laid out as it was (the
`costs` section in it, no `publishing`). City-shaped (5 models, 20 links, as the city
workload): the same StatusBuilder fed real CostStats figures and a real (unconnected)
Publisher, since no city bundle is built without TensorFlow. `--write` writes
benchmarks/results/publishing.md.
"""

from __future__ import annotations

import os
import sys
import tempfile
import timeit
from pathlib import Path

import numpy as np
from agent.outbox import Outbox

from agent.config import ModelPublishConfig, MqttConfig, PublishConfig
from agent.costs import CostStats
from agent.output import Output
from agent.publishrules import PublishRules
from agent.readable import readable
from agent.sources.city import CAPTION_LEN, CAPTION_VOCAB, TRAFFIC
from agent.status import CostsReport, Counters, Overhead, Sections, StatusBuilder
from agent.transport import Publisher, dumps
from links_tflite.tasks import TaskSpec

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "publishing.md"

KINDS = {
    "single_label (3 names)": (TaskSpec("single_label", 3, labels=TRAFFIC),
                               np.array([0.1, 0.7, 0.2], np.float32)),
    "single_label (10, no names)": (TaskSpec("single_label", 10),
                                    np.linspace(0, 1, 10).astype(np.float32)),
    "multi_label (8 names)": (TaskSpec("multi_label", 8, labels=tuple("abcdefgh")),
                              np.linspace(0, 1, 8).astype(np.float32)),
    "regression (1)": (TaskSpec("regression", 1), np.array([1.1675715], np.float32)),
    "localization (normalised)": (TaskSpec("localization", 4),
                                  np.array([0.1, 0.2, 0.5, 0.7], np.float32)),
    "sequence (caption, 3 words)": (
        TaskSpec("sequence", 0, vocab_size=len(CAPTION_VOCAB), labels=CAPTION_VOCAB,
                 max_len=CAPTION_LEN), np.array([3, 6, 10], np.float32)),
}


def per_call_us(fn, number: int = 20000) -> float:  # type: ignore[no-untyped-def]
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def readable_table() -> list[str]:
    rows = ["| task kind | us per call |", "| --- | ---: |"]
    for name, (spec, value) in KINDS.items():
        rows.append(f"| {name} | {per_call_us(lambda s=spec, v=value: readable(s, v)):.2f} |")
    return rows


def rules_table() -> list[str]:
    specs = {f"m{i}": spec for i, (spec, _) in enumerate(KINDS.values())}
    outputs = [Output(f"m{i}", value, "predicted", ("x",), 0.8, 0.1)
               for i, (_, value) in enumerate(KINDS.values())]
    every = ModelPublishConfig(min_agreement=0.5, on_change=True, change_tolerance=0.1)
    cases = {
        "no rules (the default)": PublishConfig(),
        "min_agreement on every model": PublishConfig(per_model={
            m: ModelPublishConfig(min_agreement=0.9) for m in specs}),
        "min_agreement + on_change on every model": PublishConfig(per_model={
            m: every for m in specs}),
    }
    rows = [f"| rules ({len(outputs)} outputs a frame) | us per frame |", "| --- | ---: |"]
    for name, settings in cases.items():
        rules = PublishRules(settings)
        rows.append(f"| {name} | "
                    f"{per_call_us(lambda r=rules: r.apply(outputs, specs), 5000):.2f} |")
    return rows


def digits_status() -> tuple[int, int, int]:
    import tests.support.python_models as pm
    from agent.config import load_config
    from agent.scheduler import Agent
    from tests.agent.test_scheduler_failures import python_config

    fixture = ROOT / "tests" / "data" / "digits3"
    pm.MODEL_DIR = fixture / "models"
    with tempfile.TemporaryDirectory() as tmp:
        agent = Agent.from_config(load_config(python_config(
            Path(tmp), fixture, policy="exact", budget="memory_mb = 1.0")))
        frames = agent.start()
        for _ in range(10):
            agent.process(next(frames))
        status = agent.status("running")
        costs = agent.cost_figures()
        agent.close()
    return (len(dumps(before(status, costs))), len(dumps(status)),
            len(dumps(CostsReport.message(costs))))


def before(status: dict[str, object], costs: dict[str, object]) -> dict[str, object]:
    """The status as it was laid out: the costs inside, no publishing section."""
    old = {k: v for k, v in status.items() if k != "publishing"}
    counters = {k: v for k, v in status["counters"].items()  # type: ignore[attr-defined]
                if not k.startswith("publish_")}
    return {**old, "counters": counters, "costs": costs}


def city_status() -> tuple[int, int, int]:
    models = ("persons", "traffic", "vehicles", "vehicle_box", "caption")
    rng = np.random.default_rng(0)

    def figures() -> dict[str, object]:
        stats = CostStats()
        stats.record_memory(float(rng.uniform(5, 40)))
        for _ in range(60):
            stats.add_delay(float(rng.uniform(2, 5)))
        return stats.to_dict()

    costs = {"models": {m: figures() for m in models},
             "links": {f"{s}->{t}": figures() for s in models for t in models if s != t},
             "probe": "pss", "probe_details": {}}
    health = {m: {"state": "active" if i < 2 else "predicted", "loaded": i < 2, "failures": 0,
                  "last_error": None, "retry_in_s": None, "waiting_for_hung_call": False}
              for i, m in enumerate(models)}
    profiling = {"period_frames": 0, "period_s": 300.0, "sample_frames": 20, "windows": 3,
                 "in_window": False, "age_s": 42.123, "cost_ms": 812.345,
                 "last_window_cost_ms": 270.1, "last_window_extra_memory_mb": 61.25,
                 "share_of_loop_time": 0.012345,
                 "online": {"figures": 40, "figures_in_use": 31, "samples": 1240}}
    selection = {"policy": "exact", "active": ["persons", "traffic"],
                 "predicted": ["vehicles", "vehicle_box", "caption"],
                 "use": {"memory_mb": 49.87654321, "delay_ms": 8.123456789},
                 "expected_agreement": 0.8123456789}
    sections = Sections(selection=selection, budget={"memory_mb": 50.0}, models=health,
                        profiling=profiling,
                        sources={f"site{i}": {"frames": 300} for i in range(4)},
                        publishing={"withheld": {"caption": 12}, "dropped": {},
                                    "too_soon": {}, "unchanged": {"traffic": 300}})
    with tempfile.TemporaryDirectory() as tmp:
        outbox = Outbox(Path(tmp) / "outbox.sqlite")
        publisher = Publisher(MqttConfig(), "city-demo", outbox)
        builder = StatusBuilder()
        builder.extras["control"] = lambda: {"handled": 3, "refused": 0, "rate_limited": 0,
                                             "rate_limited_by_topic": {}, "queue_full": 0}
        status = builder.build("running", sections, Counters(frames=1200, executed=2400),
                               Overhead(frames=1200, loop_ms=15000.0, models_ms=14000.0),
                               publisher, config_version=3, bundle=Path("/var/lib/mlink/b"),
                               measured_at=0.0)
        outbox.close()
    return (len(dumps(before(status, costs))), len(dumps(status)),
            len(dumps(CostsReport.message(costs))))


def main() -> int:
    lines = ["# Publishing: readable values, rules, status size", "",
             "`PYTHONPATH=$PWD .venv/bin/python benchmarks/publishing.py --write` "
             f"(best of 5 repeats; 2 cores shared with other sessions, load average "
             f"{os.getloadavg()[0]:.1f}: the microseconds are upper bounds).", "",
             "## `readable` per published output", "", *readable_table(), "",
             "## Publishing rules per frame", "", *rules_table(), "",
             "## Retained status, bytes", "",
             "| agent | before (costs inside) | after (status) | status/costs |",
             "| --- | ---: | ---: | ---: |"]
    for name, (old, new, costs) in (("digits fixture: 3 models, 6 links", digits_status()),
                                    ("city-shaped: 5 models, 20 links", city_status())):
        lines.append(f"| {name} | {old} | {new} | {costs} |")
    lines += ["", "The status goes out every 5 s; `status/costs` only when a model or link "
              "comes or goes or a figure (memory, median delay) moves by more than 20% "
              "(and 0.1 MB or 0.01 ms)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if "--write" in sys.argv:
        RESULTS.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
