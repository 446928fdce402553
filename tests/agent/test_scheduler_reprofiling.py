"""Periodic re-profiling: after a forced drift (a model's outputs on digits, the city stream
jumping from the morning to the evening rush) the online agreement follows the stream and the
selection changes as the data demands; the profiling's cost is reported; models that are not
activated are unloaded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import tests.support.python_models as pm
from agent.config import load_config
from agent.costs import MB, rss_bytes
from agent.output import model_entries
from agent.scheduler import Agent
from agent.sources import open_source
from tests.agent.test_scheduler_failures import python_config

BALLAST_MB = 16.0  # each model holds this much, so two models fit 40 MB and three do not


@pytest.fixture()
def heavy_models(digits_fixture) -> Iterator[None]:
    pm.reset()
    pm.MODEL_DIR = digits_fixture.root / "models"
    pm.BALLAST_MB = BALLAST_MB
    yield
    pm.BALLAST_MB = 0.0
    pm.reset()


def run_window(agent: Agent, frames: Iterator, n: int) -> None:
    agent.request_reprofile()
    windows = agent.window.stats.windows
    for _ in range(n):
        agent.process(next(frames))
    assert agent.window.stats.windows == windows + 1


def test_drift_changes_agreement_and_selection(digits_fixture, heavy_models,
                                               tmp_path: Path) -> None:
    config = load_config(python_config(
        tmp_path, digits_fixture.root, policy="exact", budget="memory_mb = 40.0",
        profiling="period_frames = 0\nsample_frames = 12\nmin_samples = 8\nagreement_window = 12"))
    agent = Agent.from_config(config)
    frames = agent.start()
    costs = agent.model_costs
    assert all(0.9 * BALLAST_MB <= c.memory_mb < BALLAST_MB + 8 for c in costs.values()), costs
    assert len(agent.selection.active) == 2  # two fit, three do not

    run_window(agent, frames, 12)
    before = agent.selection
    (target,) = before.predicted  # the model the links predict well enough to leave out
    sources = frozenset(before.active)
    online_before = agent.window.online.figure(target, sources)
    assert online_before is not None and online_before > 0.5
    for model_id, model in agent.models.items():  # the window's extra models are unloaded
        assert model.loaded == (model_id in before.active)

    pm.DRIFT[target] = True  # its outputs change: no link predicts them any more
    run_window(agent, frames, 12)
    after = agent.selection
    online_after = agent.window.online.figure(target, sources)
    assert online_after is not None and online_after < 0.3
    offline = agent.bundle.profile.ensemble_agreement(target, sources)
    assert offline > 0.5  # offline unchanged
    # the window's 12 frames beside the bundle's figure, counted as min_samples = 8 frames
    assert agent.profile.ensemble_agreement(target, sources) == pytest.approx(
        (12 * online_after + 8 * offline) / 20)
    assert target in after.active and after.active != before.active
    for selection in (before, after):  # models and the links into the rest, within budget
        assert selection.use["memory_mb"] <= 40.0

    status = agent.status("running")
    profiling = status["profiling"]
    assert profiling["windows"] == 2 and profiling["cost_ms"] > 0
    assert 0 < profiling["share_of_loop_time"] < 1
    assert profiling["online"]["figures_in_use"] > 0
    assert profiling["last_window_extra_memory_mb"] >= 0.85 * BALLAST_MB
    assert agent.cost_figures()["models"]["parity"]["runs"] > 0


def test_a_new_bundle_drops_the_online_figures(digits_fixture, heavy_models,
                                               tmp_path: Path) -> None:
    """The online figures measured the previous bundle's links: after a bundle swap the
    agent selects on the new bundle's profile, and the live figures are of its links only."""
    import shutil

    from links_tflite.bundle import load_bundle

    config = load_config(python_config(
        tmp_path, digits_fixture.root, policy="exact", budget="memory_mb = 40.0",
        profiling="period_frames = 0\nsample_frames = 12\nmin_samples = 8\nagreement_window = 12"))
    agent = Agent.from_config(config)
    frames = agent.start()
    (target,) = agent.selection.predicted
    sources = frozenset(agent.selection.active)
    pm.DRIFT[target] = True  # the live figure falls far below the bundle's
    run_window(agent, frames, 12)
    live = agent.window.online.figure(target, sources)
    assert live is not None and live < 0.3
    assert agent.profile.ensemble_agreement(target, sources) < \
        agent.bundle.profile.ensemble_agreement(target, sources) - 0.2

    new = load_bundle(shutil.copytree(digits_fixture.root / "bundle", tmp_path / "new"))
    agent.swap_bundle(new)
    assert agent.window.online.figure(target, sources) is None
    figure = new.profile.ensemble_agreement(target, sources)
    assert figure > 0.5 and agent.profile.ensemble_agreement(target, sources) == figure


def test_unloading_gives_memory_back(digits_fixture, heavy_models, tmp_path: Path) -> None:
    """Each window reloads the model left out and unloads it again: the box gets its memory
    back every time, and every reload is charged in full. (Before agent.heap, the reload came
    from a thread arena's top chunk, which was never released: the process kept 16 MB more
    after the second window, and reloads read 0.07 MB.)"""
    config = load_config(python_config(
        tmp_path, digits_fixture.root, policy="exact", budget="memory_mb = 40.0",
        profiling="period_frames = 0\nsample_frames = 2\nmin_samples = 1"))
    agent = Agent.from_config(config)
    frames = agent.start()
    settled = rss_bytes() / MB
    for _ in range(4):
        run_window(agent, frames, 2)
        (left_out,) = set(agent.models) - agent.selection.active
        assert not agent.models[left_out].loaded
        assert rss_bytes() / MB < settled + 0.5 * BALLAST_MB
        assert all(c.memory_mb >= 0.85 * BALLAST_MB for c in agent.model_costs.values()), \
            agent.model_costs


def test_period_in_frames_starts_windows(digits_fixture, heavy_models, tmp_path: Path) -> None:
    config = load_config(python_config(
        tmp_path, digits_fixture.root, policy="exact", budget="memory_mb = 40.0",
        profiling="period_frames = 5\nsample_frames = 2\nmin_samples = 1"))
    agent = Agent.from_config(config)
    frames = agent.start()
    calls = []
    for _ in range(14):
        before = dict(pm.CALLS)
        agent.process(next(frames))
        calls.append(sum(pm.CALLS.get(m, 0) - before.get(m, 0) for m in pm.CALLS))
    # frames 1-5 run the two activated models, 6-7 all three, 8-12 two, 13-14 three
    assert calls == [2] * 5 + [3] * 2 + [2] * 5 + [3] * 2
    assert agent.window.stats.windows == 2


# -- the city stream: a forced drift from the weekday's morning rush to its evening rush ---

CITY_MODELS = ("persons", "traffic", "vehicles")
CITY_BUDGET_MB = 44.0  # the models hold 16 MB of ballast plus their own 0.5-5 MB
CITY_WINDOW = 24  # frames per profiling window: six seconds of the four cameras
MORNING, EVENING = 7.75, 17.5


def city_config(root: Path, build_root: Path) -> Path:
    """The city zoo's vector models behind Python entry points (each holding a known
    ballast), the city stream from the morning rush, `exact` under a two-model budget."""
    models = "".join(
        f'\n[[models]]\nid = "{m}"\nadapter = "python"\n'
        f'entry = "tests.support.python_models:{m.capitalize()}"\ninput = "image"\n'
        for m in CITY_MODELS)
    path = root / "agent.toml"
    path.write_text(
        f'device_id = "test"\n[bundle]\npath = "{build_root / "bundle"}"\n'
        f'[source]\ntype = "city"\nseed = 0\ncameras = 4\nstart_day = 0\n'
        f"start_hour = {MORNING}\n[budget]\nmemory_mb = {CITY_BUDGET_MB}\n"
        f'[selection]\npolicy = "exact"\n'
        f"[profiling]\nwarmup_runs = 1\ndelay_runs = 3\nperiod_frames = 0\n"
        f"sample_frames = {CITY_WINDOW}\nmin_samples = 8\nagreement_window = {CITY_WINDOW}\n"
        + models)
    return path


def reference_agreement(build, frames: list, target: str, sources: frozenset[str]) -> float:
    """What the data says, computed without the agent: the target's exact output and the
    ensemble over `sources` from the models' and links' own files, on the same frames."""
    from links_tflite.agreement import mean_agreement
    from links_tflite.bundle import load_bundle
    from links_tflite.ensemble import EnsemblePredictor, combine_outputs, open_link
    from links_tflite.interpreter import TFLiteRunner

    bundle = load_bundle(build.bundle)
    models = {m: TFLiteRunner(build.model_file(m)) for m in (target, *sources)}
    links = {s: open_link(bundle, bundle.link(s, target)) for s in sources}
    weights, pooling = EnsemblePredictor(bundle).weights(target)
    scores = []
    for frame in frames:
        image = frame.modalities["image"]
        outputs = {s: links[s].run_one(models[s].run_one(image)) for s in sources}
        prediction = combine_outputs(bundle.models[target], weights, outputs, pooling)
        scores.append(mean_agreement(bundle.models[target], prediction,
                                     models[target].run_one(image)))
    return float(np.mean(scores))


def window_frames(agent: Agent, frames: Iterator, n: int) -> list:
    """Run a profiling window on the next n frames; return them."""
    agent.request_reprofile()
    windows = agent.window.stats.windows
    seen = []
    for _ in range(n):
        seen.append(next(frames))
        agent.process(seen[-1])
    assert agent.window.stats.windows == windows + 1
    return seen


def test_city_drift_to_the_evening_rush(city_build, tmp_path: Path) -> None:
    """In the morning rush the traffic model calls every frame free, so any link predicts it;
    in the evening rush it sees jams, and only the vehicle count tells them apart. After the
    stream jumps to the evening, the measured agreement of what is predicted falls as far as
    the data says, and the selection is the best the evening's data allows."""
    pm.reset()
    pm.MODEL_DIR = city_build.root / "models"
    # each model 16-21 MB: any two fit the budget with room, three do not
    pm.BALLAST_MB = BALLAST_MB
    try:
        agent = Agent.from_config(load_config(city_config(tmp_path, city_build.root)))
        morning = window_frames(agent, agent.start(), CITY_WINDOW)
        before = agent.selection
        (target,) = before.predicted
        sources = frozenset(before.active)
        online_before = agent.window.online.figure(target, sources)
        assert online_before == pytest.approx(
            reference_agreement(city_build, morning, target, sources), abs=1e-6)

        drifted = agent.config.source.model_copy(update={"start_hour": EVENING})
        evening = window_frames(agent, open_source(drifted).frames(), CITY_WINDOW)
        online_after = agent.window.online.figure(target, sources)
        assert online_after == pytest.approx(
            reference_agreement(city_build, evening, target, sources), abs=1e-6)
        assert online_after < online_before - 0.15  # the drift is in the data, and measured
        def in_force(model: str, subset: frozenset[str], live: float) -> float:
            """The window's figure beside the bundle's, counted as min_samples = 8 frames."""
            offline = agent.bundle.profile.ensembles[model][subset]
            return (CITY_WINDOW * live + 8 * offline) / (CITY_WINDOW + 8)

        assert agent.profile.ensemble_agreement(target, sources) == pytest.approx(
            in_force(target, sources, online_after))

        # the selection now rests on the evening's figures: the predicted model is the one
        # the other two predict best on the evening's frames (beside the bundle's figures)
        after = agent.selection
        (predicted,) = after.predicted
        figures = {m: in_force(m, frozenset(CITY_MODELS) - {m}, reference_agreement(
            city_build, evening, m, frozenset(CITY_MODELS) - {m})) for m in CITY_MODELS}
        assert predicted == max(figures, key=figures.__getitem__), figures
        assert after.expected_agreement == pytest.approx((2 + figures[predicted]) / 3, abs=1e-6)
        assert after.use["memory_mb"] <= CITY_BUDGET_MB
        payload = next(p for p in model_entries(agent.process(evening[-1]))
                       if p["model"] == predicted)
        # served the better of its ensemble and its prior by the evening's figures (the
        # window's stream prior where that beat the bundle's)
        prior = agent.profile.priors.get(predicted, 0.0)
        if prior >= figures[predicted]:
            assert payload["provenance"] == "prior"
            assert payload["est_agreement"] == pytest.approx(prior, abs=1e-4)
        else:
            assert payload["provenance"] == "predicted"
            assert payload["est_agreement"] == pytest.approx(figures[predicted], abs=1e-6)
    finally:
        pm.BALLAST_MB = 0.0
        pm.reset()
