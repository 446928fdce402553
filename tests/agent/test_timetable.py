"""The timetable of a plan: `run/p` models run on every p-th frame of each camera, staggered so
that the per-frame delay stays flat, and between their runs their last exact output is served
with its age while the reuse curve covers it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from agent.planning import Action, Plan
from agent.timetable import Timetable, stagger


def plan(actions: dict[str, Action]) -> Plan:
    return Plan(actions, {}, 0.0)


def frames_run(timetable: Timetable, camera: int, n: int) -> list[list[str]]:
    due = []
    for _ in range(n):
        timetable.tick(camera)
        due.append(timetable.due(camera))
    return due


def test_run_p_runs_every_pth_frame_staggered() -> None:
    timetable = Timetable()
    timetable.set_plan(plan({"a": Action("run"), "b": Action("run", 4), "c": Action("run", 4),
                             "d": Action("run", 2), "e": Action("prior")}),
                       {"a": 9.0, "b": 2.0, "c": 2.0, "d": 2.0}, {})
    assert set(timetable.periods) == {"b", "c", "d"}  # run every frame is not in the timetable
    due = frames_run(timetable, 0, 16)
    for model, period in (("b", 4), ("c", 4), ("d", 2)):
        turns = [n for n, models in enumerate(due) if model in models]
        assert len(turns) == 16 // period
        assert all(b - a == period for a, b in itertools.pairwise(turns))
    # the same per-run delay: b, c and d never share a frame, so each frame runs one of them
    assert [len(models) for models in due] == [1] * 16


def test_stagger_keeps_the_heaviest_frame_light() -> None:
    periods = {"big": 3, "m1": 3, "m2": 3, "s1": 6, "s2": 6}
    delays = {"big": 6.0, "m1": 3.0, "m2": 3.0, "s1": 1.0, "s2": 1.0}
    offsets = stagger(periods, delays)
    load = np.zeros(6)
    for model, period in periods.items():
        load += delays[model] * ((np.arange(6) + offsets[model]) % period == 0)
    assert load.max() == 6.0  # big alone on its frames, the others spread over the rest
    assert all(0 <= offsets[m] < periods[m] for m in periods)


def test_cameras_count_their_own_frames() -> None:
    timetable = Timetable()
    timetable.set_plan(plan({"b": Action("run", 3)}), {"b": 1.0}, {"b": (0.9, 0.8)})
    offset = timetable.offsets["b"]
    interleaved = []
    for _ in range(6):
        for camera in (0, 1):
            timetable.tick(camera)
            interleaved.append((camera, timetable.index(camera), timetable.due(camera)))
    for camera, index, due in interleaved:
        assert (due == ["b"]) == ((index + offset) % 3 == 0), (camera, index)


def test_reused_carries_its_age_while_the_curve_covers_it() -> None:
    timetable = Timetable()
    timetable.set_plan(plan({"b": Action("run", 3)}), {"b": 1.0}, {"b": (0.9, 0.8)})
    timetable.tick(0)
    assert timetable.reused("b", 0) is None  # nothing run yet on this camera
    timetable.record("b", 0, np.array([1.0, 0.0]))
    assert timetable.reused("b", 0) is None  # age 0: the frame's own output, not reused
    timetable.tick(1)
    timetable.record("b", 1, np.array([0.0, 1.0]))  # another camera's output stays apart
    ages = []
    for _ in range(3):
        timetable.tick(0)
        reused = timetable.reused("b", 0)
        ages.append(None if reused is None else (reused.age, reused.agreement,
                                                 reused.output.tolist()))
    assert ages == [(1, 0.9, [1.0, 0.0]), (2, 0.8, [1.0, 0.0]), None]  # age 3: not covered


@pytest.mark.parametrize("period", [2, 3, 4, 6, 8, 12, 16])
def test_one_model_runs_on_its_offset(period: int) -> None:
    timetable = Timetable()
    timetable.set_plan(plan({"b": Action("run", period)}), {"b": 1.0}, {})
    due = frames_run(timetable, 0, 2 * period)
    assert sum(bool(d) for d in due) == 2
