"""A model that raises (also SystemExit or KeyboardInterrupt), hangs, returns NaN or the
wrong shape is excluded and predicted from the others; the loop goes on, and the model comes
back after its back-off. On the committed fixture (tests/data/digits3): no TensorFlow, nothing
trained."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

import tests.support.python_models as pm
from agent.config import load_config
from agent.models import ModelFailure, check_output
from agent.output import model_entries
from agent.runner import Runner
from agent.scheduler import Agent
from agent.selection import Selection

MODELS = ("digit", "parity", "inkbox")


def python_config(root: Path, build_root: Path, policy: str = "all", budget: str = "",
                  timeout_ms: float = 5000, retry_after_s: float = 0.0,
                  profiling: str = "period_frames = 0") -> Path:
    """An agent config whose models are the digits zoo behind Python entry points."""
    models = "".join(
        f'\n[[models]]\nid = "{m}"\nadapter = "python"\n'
        f'entry = "tests.support.python_models:{m.capitalize()}"\ninput = "image"\n'
        f"timeout_ms = {timeout_ms}\n"
        for m in MODELS
    )
    text = (
        f'device_id = "test"\n[bundle]\npath = "{build_root / "bundle"}"\n'
        f'[source]\ntype = "replay"\npath = "{build_root / "stream.npz"}"\n'
        f"[budget]\n{budget}\n"
        f'[selection]\npolicy = "{policy}"\nretry_after_s = {retry_after_s}\n'
        f"[profiling]\nwarmup_runs = 1\ndelay_runs = 3\n{profiling}\n" + models
    )
    path = root / "agent.toml"
    path.write_text(text)
    return path


def by_model(message: dict | None) -> dict[str, dict]:
    return {str(p["model"]): p for p in model_entries(message)}


@pytest.mark.parametrize(("mode", "kind"), [("raise", "error"), ("exit", "error"),
                                            ("interrupt", "error"), ("nan", "nan"),
                                            ("shape", "shape"), ("hang", "timeout")])
def test_failed_model_is_predicted_and_comes_back(digits_fixture, models, tmp_path: Path,
                                                  mode: str, kind: str) -> None:
    config = load_config(python_config(tmp_path, digits_fixture.root, timeout_ms=300,
                                       retry_after_s=3600.0))
    agent = Agent.from_config(config)
    frames = agent.start()
    assert agent.selection is not None and agent.selection.active == set(MODELS)
    first = by_model(agent.process(next(frames)))
    assert {p["provenance"] for p in first.values()} == {"executed"}

    pm.MODE["parity"] = mode
    for _ in range(3):  # the frame it fails on, and the ones after
        outputs = by_model(agent.process(next(frames)))
        assert set(outputs) == set(MODELS)  # every model's output still arrives
        parity = outputs["parity"]
        assert parity["provenance"] == "predicted"
        assert set(parity["sources"]) <= {"digit", "inkbox"} and parity["sources"]
        assert len(parity["value"]) == 2 and all(np.isfinite(parity["value"]))
        assert outputs["digit"]["provenance"] == "executed"
    status = agent.status("running")
    assert status["models"]["parity"]["state"] == "failed"
    assert agent.executor.health["parity"].last_kind == kind
    assert status["counters"]["model_errors"] == 1  # excluded: not called again meanwhile
    assert status["counters"]["reselections"] == 1  # the failure's, not only periodic ones
    assert "parity" not in status["selection"]["active"]
    if mode == "hang":
        assert status["counters"]["timeouts"] == 1
        pm.RELEASE.set()
        # the hung call returns, its thread ends
        assert agent.executor.abandoned["parity"].join(10.0)

    # its back-off ends: it is measured again and, healthy, activated again
    pm.MODE["parity"] = "ok"
    agent.executor.health["parity"].retry_at = 0.0
    outputs = by_model(agent.process(next(frames)))
    assert outputs["parity"]["provenance"] == "executed"
    assert agent.status("running")["models"]["parity"]["state"] == "active"


def test_a_hung_model_is_retried_once_its_hung_call_returns(digits_fixture, models,
                                                            tmp_path: Path) -> None:
    """Not while the abandoned call still runs (the status says so, not a count-down that
    never comes), and on the first frame after it has returned."""
    from tests.support.contract import validate

    config = load_config(python_config(tmp_path, digits_fixture.root, timeout_ms=200,
                                       retry_after_s=0.05))
    agent = Agent.from_config(config)
    frames = agent.start()
    pm.MODE["parity"] = "hang"
    agent.process(next(frames))
    health = agent.executor.health["parity"]
    assert health.failed and health.last_kind == "timeout"
    calls = pm.CALLS["parity"]
    time.sleep(0.1)  # the back-off is over; the call still hangs
    for _ in range(3):
        assert by_model(agent.process(next(frames)))["parity"]["provenance"] == "predicted"
    assert pm.CALLS["parity"] == calls  # not retried meanwhile (no second hung thread)
    status = agent.status("running")
    validate("status", status)
    assert status["models"]["parity"]["state"] == "failed"
    assert status["models"]["parity"]["waiting_for_hung_call"] is True
    assert status["models"]["parity"]["retry_in_s"] == 0.0

    pm.MODE["parity"] = "ok"
    pm.RELEASE.set()
    assert agent.executor.abandoned["parity"].join(10.0)
    outputs = by_model(agent.process(next(frames)))  # retried at once, and back
    assert outputs["parity"]["provenance"] == "executed"
    assert pm.CALLS["parity"] > calls
    status = agent.status("running")
    assert status["models"]["parity"]["state"] == "active"
    assert status["models"]["parity"]["waiting_for_hung_call"] is False
    assert "parity" not in agent.executor.abandoned


def test_a_model_failing_on_every_retry_backs_off_longer(digits_fixture, models,
                                                         tmp_path: Path) -> None:
    config = load_config(python_config(tmp_path, digits_fixture.root, retry_after_s=2.0))
    agent = Agent.from_config(config)
    frames = agent.start()
    pm.MODE["inkbox"] = "raise"
    backoffs = []
    for _ in range(3):
        agent.process(next(frames))
        health = agent.executor.health["inkbox"]
        assert health.retry_at is not None
        backoffs.append(health.backoff_s)
        health.retry_at = 0.0  # the back-off is over: the next frame retries
    assert backoffs == [2.0, 4.0, 8.0]
    assert agent.executor.health["inkbox"].failures == 3
    calls_before = pm.CALLS["inkbox"]
    agent.executor.health["inkbox"].retry_at = float("inf")
    agent.process(next(frames))
    assert pm.CALLS["inkbox"] == calls_before  # not called while excluded


def test_failure_during_measuring_excludes_the_model(digits_fixture, models,
                                                     tmp_path: Path) -> None:
    pm.MODE["digit"] = "raise"
    agent = Agent.from_config(load_config(python_config(tmp_path, digits_fixture.root,
                                                        policy="exact", retry_after_s=3600.0)))
    frames = agent.start()
    assert agent.selection is not None and "digit" not in agent.selection.active
    outputs = by_model(agent.process(next(frames)))
    assert outputs["digit"]["provenance"] == "predicted"


def test_runner_abandons_a_batch_at_the_hung_call() -> None:
    import threading

    release = threading.Event()
    done: list[str] = []
    runner = Runner("test")
    assert runner.run(lambda: runner.guard("a", 5.0, lambda: 41 + 1), 5.0) == 42
    with pytest.raises(ValueError, match="bad"):
        runner.run(lambda: runner.guard("a", 5.0, lambda: (_ for _ in ()).throw(
            ValueError("bad"))), 5.0)

    def batch() -> None:
        for name, call in (("a", lambda: None), ("b", release.wait), ("c", lambda: None)):
            runner.guard(name, 0.05, call)
            done.append(name)

    with pytest.raises(ModelFailure, match="model b: no answer within 50 ms") as caught:
        runner.run(batch, 0.05)
    assert caught.value.kind == "timeout" and runner.hung_on == "b" and runner.busy
    assert done == ["a"]
    with pytest.raises(RuntimeError, match="hung"):
        runner.run(lambda: None, 1.0)
    release.set()  # the hung call returns: the rest of the batch does not run there
    assert runner.join(5.0) and done == ["a"]
    idle = Runner("idle")
    assert idle.run(lambda: 1, 1.0) == 1
    idle.stop()
    assert idle.join(5.0)


def test_check_output() -> None:
    with pytest.raises(ModelFailure, match="NaN"):
        check_output("m", [0.5, float("nan")], 2)
    with pytest.raises(ModelFailure, match="3 numbers"):
        check_output("m", [0.5, 0.1, 0.2], 2)
    assert check_output("m", [[0.5], [0.5]], 2).shape == (2,)


def test_entry_point_that_cannot_load_is_a_failed_model(digits_fixture, models,
                                                        tmp_path: Path) -> None:
    path = python_config(tmp_path, digits_fixture.root, retry_after_s=3600.0)
    path.write_text(path.read_text().replace("tests.support.python_models:Inkbox",
                                             "tests.support.python_models:Missing"))
    agent = Agent.from_config(load_config(path))
    frames = agent.start()
    health = agent.executor.health["inkbox"]
    assert health.failed and health.last_error is not None and "AttributeError" in health.last_error
    outputs = by_model(agent.process(next(frames)))
    assert outputs["inkbox"]["provenance"] == "predicted"
    assert agent.status("running")["models"]["inkbox"]["state"] == "failed"


def test_costs_can_be_forgotten_and_restored(digits_fixture, models, tmp_path: Path) -> None:
    """What a caller that re-measures from scratch, or rolls back, relies on."""
    from agent.costs import Cost

    agent = Agent.from_config(load_config(python_config(tmp_path, digits_fixture.root)))
    agent.start()
    models_before, links_before = agent.model_costs, agent.link_costs
    assert all(c.delay_ms is not None for c in models_before.values()) and len(links_before) == 6
    agent.costs.set_model_costs({})
    agent.costs.set_link_costs({})
    assert set(agent.model_costs.values()) == {Cost(None, None)} and not agent.link_costs
    agent.costs.set_model_costs(models_before)
    agent.costs.set_link_costs(links_before)
    assert agent.model_costs == models_before and agent.link_costs == links_before
    assert agent.cost_figures()["models"]["digit"]["delay_ms"] is not None


def test_models_can_be_disabled_and_enabled_at_run_time(digits_fixture, models,
                                                        tmp_path: Path) -> None:
    """What a remote `enabled = false` does to the running agent: the model leaves
    `agent.models`; selection, the loop and the status carry on without it."""
    agent = Agent.from_config(load_config(python_config(tmp_path, digits_fixture.root,
                                                        policy="exact")))
    frames = agent.start()
    inkbox = agent.models.pop("inkbox")
    inkbox.unload()
    agent.reselect()
    assert set(by_model(agent.process(next(frames)))) == {"digit", "parity"}
    assert set(agent.status("running")["models"]) == {"digit", "parity"}
    agent.models["inkbox"] = inkbox
    agent.reselect()
    assert set(by_model(agent.process(next(frames)))) == set(MODELS)


def test_watchdog_and_inline_give_the_same_outputs(digits_fixture, models, tmp_path: Path) -> None:
    """A frame's models run in one batch on the runner thread, and its predictions and
    payloads are made there: what comes out is what the same agent computes inline."""
    runs = {}
    for timeout_ms in (5000.0, 0.0):
        root = tmp_path / f"t{timeout_ms:.0f}"
        root.mkdir()
        agent = Agent.from_config(load_config(python_config(root, digits_fixture.root,
                                                            timeout_ms=timeout_ms)))
        frames = agent.start()
        # parity predicted from the other two
        agent.apply(Selection("test", frozenset({"digit", "inkbox"}), ("parity",), {}, 0.0,
                              True))
        runs[timeout_ms] = [
            {m: (p["provenance"], p["value"], p["sources"]) for m, p in by_model(
                agent.process(next(frames))).items()}
            for _ in range(5)]
    assert runs[5000.0] == runs[0.0]
    assert all(frame["parity"][0] == "predicted" for frame in runs[0.0])


def test_status_reports_the_agents_own_time_per_frame(digits_fixture, models,
                                                      tmp_path: Path) -> None:
    from tests.support.contract import validate

    agent = Agent.from_config(load_config(python_config(tmp_path, digits_fixture.root)))
    frames = agent.start()
    payloads = [model_entries(agent.process(next(frames))) for _ in range(4)]
    overhead = agent.status("running")["overhead"]
    validate("status", agent.status("running"))
    executed_ms = sum(p["latency_ms"] for frame in payloads for p in frame
                      if p["provenance"] == "executed")
    assert overhead["frames"] == 4
    assert overhead["models_ms_per_frame"] == pytest.approx(executed_ms / 4, abs=1e-3)
    assert overhead["agent_ms_per_frame"] > 0
    assert overhead["share_of_models"] == pytest.approx(
        overhead["agent_ms_per_frame"] / overhead["models_ms_per_frame"], rel=1e-2)
