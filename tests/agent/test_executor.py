"""The model executor on plain Python models (no bundle, no TensorFlow): guarded calls,
checked outputs, failures, back-off and retries."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest

from agent.config import ModelConfig, ProfilingConfig, SelectionConfig
from agent.costbook import CostBook
from agent.costs import RssProbe
from agent.executor import ModelExecutor, Ran
from agent.models import ModelFailure, make_model
from agent.sources import Frame

MODE: dict[str, str] = {}
RELEASE = threading.Event()


def double(example: np.ndarray) -> np.ndarray:
    if MODE.get("double") == "raise":
        raise RuntimeError("broken")
    if MODE.get("double") == "hang":
        RELEASE.wait(10.0)
    if MODE.get("double") == "nan":
        return np.array([np.nan, 0.0])
    return np.asarray(example) * 2


def total(example: np.ndarray) -> np.ndarray:
    return np.asarray([np.sum(example)])


FRAME = Frame(frame_id=1, ts=0.0, modalities={"x": np.array([1.0, 2.0], np.float32)})


@pytest.fixture()
def executor() -> Iterator[ModelExecutor]:
    MODE.clear()
    RELEASE.clear()
    configs = [ModelConfig(id=name, adapter="python", entry=f"tests.agent.test_executor:{name}",
                           input="x", timeout_ms=200.0) for name in ("double", "total")]
    models = {c.id: make_model(c) for c in configs}
    costs = CostBook(ProfilingConfig(warmup_runs=0))
    executor = ModelExecutor(models, {"double": 2, "total": 1}, costs, RssProbe(),
                             SelectionConfig(retry_after_s=1.0, retry_max_s=3.0))
    yield executor
    RELEASE.set()
    executor.close()


def test_a_frames_models_run_in_one_batch_and_their_costs_are_counted(executor) -> None:
    outcomes, total_of = executor.run_models(FRAME, ["double", "total"],
                                             lambda ran: sum(float(r.output.sum())
                                                             for r in ran.values()))
    assert all(isinstance(o, Ran) for o in outcomes.values())
    assert outcomes["double"].output.tolist() == [2.0, 4.0]  # type: ignore[union-attr]
    assert total_of == 9.0  # `then` ran: every model succeeded
    assert executor.costs.model("double").runs == 1
    assert executor.costs.model("double").memory_mb is not None  # loaded for the frame


@pytest.mark.parametrize(("mode", "kind"), [("raise", "error"), ("nan", "nan"),
                                            ("hang", "timeout")])
def test_a_failure_is_an_outcome_and_the_others_still_run(executor, mode: str,
                                                          kind: str) -> None:
    MODE["double"] = mode
    outcomes, then = executor.run_models(FRAME, ["double", "total"], lambda ran: "made")
    failure = outcomes["double"]
    assert isinstance(failure, ModelFailure) and failure.kind == kind
    assert isinstance(outcomes["total"], Ran) and then is None  # not every model succeeded
    if mode == "hang":
        assert executor.abandoned["double"].hung_on == "double"
        RELEASE.set()


def test_back_off_doubles_up_to_its_cap_and_a_healthy_retry_clears_it(executor) -> None:
    failure = ModelFailure("error", "model double: broken")
    backoffs = [executor.fail("double", failure).backoff_s for _ in range(3)]
    assert backoffs == [1.0, 2.0, 3.0]
    assert executor.unavailable() == {"double"} and executor.available() == ["total"]
    assert executor.status(["total"])["double"]["state"] == "failed"
    executor.health["double"].retry_at = 0.0  # the back-off is over
    back, failures = executor.retry_due(FRAME)
    assert list(back) == ["double"] and not failures and not executor.health["double"].failed
    assert executor.status(["double"])["double"]["state"] == "active"


def test_a_retry_that_fails_again_is_excluded_again(executor) -> None:
    executor.fail("double", ModelFailure("error", "model double: broken"))
    executor.health["double"].retry_at = 0.0
    MODE["double"] = "raise"
    back, failures = executor.retry_due(FRAME)
    assert not back and [f.kind for f in failures] == ["error"]
    assert executor.health["double"].failures == 2 and executor.health["double"].failed


def test_a_hung_model_gets_a_fresh_adapter(executor) -> None:
    before = executor.models["double"]
    executor.fail("double", ModelFailure("timeout", "model double: no answer"))
    assert executor.models["double"] is not before and not executor.models["double"].loaded
