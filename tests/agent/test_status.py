"""The status builder puts the parts' sections, the counters and the outbox in one message
that matches the contract."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from jsonschema import ValidationError

from agent.status import CostsReport, Counters, Overhead, Sections, StatusBuilder
from tests.support.contract import validate

SECTIONS = Sections(
    selection=None, budget={"memory_mb": 10.0}, models={}, profiling={"windows": 0},
    publishing={"withheld": {}, "dropped": {}, "too_soon": {}, "unchanged": {}},
)


class FakeOutbox:
    dropped = 3

    def stats(self) -> dict[str, Any]:
        return {"depth": 1, "max_messages": 10, "dropped": 3, "acked": 4, "recovered": 0}


class FakePublisher:
    published = 5
    pending = 1
    outbox = FakeOutbox()

    def health(self) -> dict[str, object]:
        return {"state": "degraded", "problems": ["the broker refuses publications"],
                "connected": True, "refused": {"135 Not authorized": 2}, "refused_waiting": 2,
                "responses_dropped": 0, "disk_full": False, "unstored": 0,
                "frames_skipped": {"outbox_full": 7}}


def test_status_without_a_publisher() -> None:
    status = StatusBuilder().build("running", SECTIONS, Counters(frames=2), Overhead(), None,
                                   config_version=0, bundle=Path("/b"), measured_at=None)
    validate("status", status)
    assert status["outbox"] is None and status["outbox_depth"] == 0
    assert status["counters"]["published"] == 0  # type: ignore[index]
    assert "outbox_dropped" not in status["counters"]  # type: ignore[operator]
    assert status["profile_age_s"] is None and status["bundle"] == "/b"
    assert status["sources"] == {}  # a source that counts nothing


def test_status_carries_what_each_camera_s_source_counted() -> None:
    counted = {"gate": {"decoded": 40, "skipped": 0, "dropped": 3, "disconnects": 1,
                        "failed_opens": 2, "reconnects": 1},
               "reviews": {"records": 150, "too_long": 1, "not_utf8": 0, "malformed": 2}}
    sections = Sections(**{**vars(SECTIONS), "sources": counted})
    status = StatusBuilder().build("running", sections, Counters(), Overhead(), None,
                                   config_version=0, bundle=Path("/b"), measured_at=None)
    validate("status", status)
    assert status["sources"] == counted
    with pytest.raises(ValidationError):  # a count is a whole number, never negative
        validate("status", {**status, "sources": {"gate": {"dropped": -1}}})


def test_status_reports_the_outbox_and_the_config_version() -> None:
    overhead = Overhead(frames=2, loop_ms=10.0, models_ms=8.0)
    builder = StatusBuilder()
    builder.extras["control"] = lambda: {"handled": 1, "refused": 2, "rate_limited": 0,
                                         "rate_limited_by_topic": {}, "queue_full": 0}
    status = builder.build("stopped", SECTIONS, Counters(frames=2, executed=4),
                           overhead, FakePublisher(), config_version=7,
                           bundle=Path("/b"), measured_at=0.0)
    validate("status", status)
    assert status["delivery"]["state"] == "degraded"  # type: ignore[index]
    assert status["control"]["refused"] == 2  # type: ignore[index]
    assert status["config_version"] == 7 and status["outbox_depth"] == 1
    assert status["counters"]["outbox_dropped"] == 3  # type: ignore[index]
    assert status["counters"]["published"] == 5  # type: ignore[index]
    assert status["overhead"]["share_of_models"] == 0.25  # type: ignore[index]
    assert isinstance(status["profile_age_s"], float)


def costs(parity_p50: float | None = 0.5, memory: float = 2.0, **extra: Any) -> dict[str, Any]:
    figures = {"memory_mb": memory, "delay_ms": 9.9, "delay_p50_ms": parity_p50,
               "delay_p95_ms": 1.0, "runs": 5}
    return {"models": {"parity": figures, **extra}, "links": {}, "probe": "rss",
            "probe_details": {}}


def test_costs_are_published_when_a_figure_moves_not_when_it_wanders() -> None:
    report = CostsReport()
    assert report.due(costs())  # the first
    assert not report.due(costs())
    assert not report.due(costs(0.55, memory=2.05))  # within 20% or its floor
    assert not report.due({**costs(), "models": {"parity": {
        **costs()["models"]["parity"], "delay_ms": 50.0, "runs": 99}}})  # the EMA swings
    assert report.due(costs(0.7))  # the median delay moved
    assert not report.due(costs(0.75))  # compared with the last one published
    assert report.due(costs(0.75, memory=3.0))
    assert report.due(costs(None, memory=3.0))  # a figure forgotten (before a remeasure)
    assert report.due(costs(None, memory=3.0, digit=costs()["models"]["parity"]))  # a model
    assert report.due({**costs(None, memory=3.0, digit=costs()["models"]["parity"]),
                       "probe": "pss"})


def test_the_status_is_small_and_leaves_the_costs_out() -> None:
    status = StatusBuilder().build("running", SECTIONS, Counters(), Overhead(), FakePublisher(),
                                   config_version=0, bundle=Path("/b"), measured_at=None)
    validate("status", status)
    assert "costs" not in status
    assert status["publishing"] == SECTIONS.publishing
    assert status["counters"]["publish_withheld"] == 0  # type: ignore[index]
    message = CostsReport.message(costs())
    validate("status-costs", message)
    assert isinstance(message["ts"], float)
