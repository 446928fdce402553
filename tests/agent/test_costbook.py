"""The cost book: model costs by id and link costs by (source, target), apart."""

from __future__ import annotations

from agent.config import ProfilingConfig
from agent.costbook import CostBook
from agent.costs import Cost


def book() -> CostBook:
    return CostBook(ProfilingConfig(warmup_runs=1, ema_alpha=0.5))


def test_model_and_link_costs_are_kept_apart() -> None:
    costs = book()
    costs.model("a").record_memory(10.0)
    costs.link("a", "b").record_memory(1.0)
    costs.model("a->b").record_memory(99.0)  # a model id is only an id, whatever it holds
    assert costs.model_costs(["a", "b"]) == {"a": Cost(10.0, None), "b": Cost(None, None)}
    assert costs.link_costs([("a", "b"), ("b", "a")]) == {("a", "b"): Cost(1.0, None)}
    costs.set_model_costs({})  # forgetting the models' figures keeps the links'
    assert costs.link_costs([("a", "b")]) == {("a", "b"): Cost(1.0, None)}
    assert costs.model_costs(["a"]) == {"a": Cost(None, None)}


def test_new_figures_follow_the_settings_and_skip_the_warm_up() -> None:
    costs = book()
    stats = costs.model("a")
    stats.begin_load()
    for ms in (100.0, 2.0, 4.0):  # the first run after a load is warm-up
        stats.add_delay(ms)
    assert stats.runs == 2 and stats.cost().delay_ms == 3.0


def test_set_costs_keeps_the_running_figures_and_replaces_the_rest() -> None:
    costs = book()
    costs.model("a").add_delay(5.0)
    costs.model("a").add_delay(5.0)
    costs.set_model_costs({"a": Cost(7.0, 6.0), "c": Cost(1.0, 2.0)})
    assert costs.model("a").runs == 2  # the same figures, their cost replaced
    assert costs.model_costs(["a", "c"]) == {"a": Cost(7.0, 6.0), "c": Cost(1.0, 2.0)}


def test_a_snapshot_puts_every_figure_back() -> None:
    costs = book()
    costs.model("a").record_memory(3.0)
    costs.link("a", "b").add_delay(1.0)
    snapshot = costs.snapshot()
    costs.model("a").record_memory(100.0)
    costs.keep_only(["b"])
    assert costs.link_costs([("a", "b")]) == {}
    costs.restore(snapshot)
    assert costs.model_costs(["a"]) == {"a": Cost(3.0, None)}
    assert costs.link("a", "b").runs == 1
    costs.model("a").record_memory(50.0)  # the snapshot is a copy, not shared
    costs.restore(snapshot)
    assert costs.model_costs(["a"]) == {"a": Cost(3.0, None)}


def test_status_names_links_source_to_target() -> None:
    costs = book()
    costs.link("a", "b").record_memory(1.5)
    report = costs.to_dict(["a"], [("a", "b"), ("b", "a")])
    assert set(report["models"]) == {"a"} and set(report["links"]) == {"a->b"}
    assert report["links"]["a->b"]["memory_mb"] == 1.5
