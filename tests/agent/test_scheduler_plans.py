"""The loop executes a plan (agent.planning): `run` every frame, `run/p` on every p-th frame of
the camera, staggered, its last exact output reused in between with its age, `predict`,
`prior` and `none`; reuse curves measured in the profiling windows and the plan re-made with
them; the status shows the plan. On the committed fixture (tests/data/digits3): no
TensorFlow."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pytest

from agent.config import load_config
from agent.costs import Cost
from agent.output import Output, Payloads, model_entries
from agent.planning import Action, Plan, standing_options
from agent.profiling import PRIOR
from agent.scheduler import Agent
from agent.selection import Selection
from links_tflite.agreement import mean_agreement
from links_tflite.bundle import MANIFEST, PROFILE, load_bundle, write_manifest
from links_tflite.prior import prior_outputs
from links_tflite.temporal import reuse_curve
from tests.agent.test_scheduler_failures import python_config
from tests.agent.test_scheduler_priors import PARITY_PRIOR, with_priors
from tests.support.contract import validate

MODELS = ("digit", "parity", "inkbox")
CURVE = (0.9, 0.8, 0.7)


def with_reuse(fixture: Path, root: Path, curves: Mapping[str, tuple[float, ...]],
               priors: Mapping[str, float] | None = None) -> Path:
    """The fixture's build with priors and, in its profile, these reuse curves (and these
    prior figures, where given)."""
    build = with_priors(fixture, root)
    bundle = build / "bundle"
    profile = json.loads((bundle / PROFILE).read_text())
    profile["reuse"] = {m: list(c) for m, c in curves.items()}
    if priors is not None:
        profile["priors"] = dict(priors)
    (bundle / PROFILE).write_text(json.dumps(profile))
    manifest = json.loads((bundle / MANIFEST).read_text())
    for key in ("files", "format", "format_version"):
        manifest.pop(key)
    write_manifest(bundle, manifest)
    return build


class Kept(Payloads):
    """The messages as usual; every frame's `Output`s kept, in order."""

    def __init__(self, cameras: Iterable[str]) -> None:
        super().__init__(tuple(cameras))
        self.frames: list[dict[str, Output]] = []

    def make(self, frame, outputs, settings, specs):  # type: ignore[no-untyped-def]
        outputs = list(outputs)
        self.frames.append({o.model: o for o in outputs})
        return super().make(frame, outputs, settings, specs)


def started(config: Path) -> tuple[Agent, Kept, Iterable]:
    agent = Agent.from_config(load_config(config))
    kept = Kept(agent.source.cameras)
    agent.payloads = kept
    return agent, kept, agent.start()


def with_plan(agent: Agent, actions: dict[str, Action]) -> None:
    plan = Plan(actions, {}, 0.0)
    agent.apply(Selection("plan", plan.active, tuple(m for m in actions if m not in plan.active),
                          {}, 0.0, True, plan=plan))


def test_run_p_runs_staggered_and_is_reused_with_its_age(digits_fixture, models,
                                                         tmp_path: Path) -> None:
    build = with_reuse(digits_fixture.root, tmp_path / "build", {m: CURVE for m in MODELS})
    agent, kept, stream = started(python_config(tmp_path, build))
    with_plan(agent, {"digit": Action("run"), "parity": Action("run", 3),
                      "inkbox": Action("run", 3)})
    offsets = {m: agent.timetable.offsets[m] for m in ("parity", "inkbox")}
    assert offsets["parity"] != offsets["inkbox"]  # staggered: never both on one frame
    payloads = [p for _ in range(12) for p in model_entries(agent.process(next(stream)))]
    last: dict[str, tuple[int, list[float]]] = {}
    fallbacks = 0
    for n, outputs in enumerate(kept.frames):
        executed = {m for m, o in outputs.items() if o.provenance == "executed"}
        assert executed == {"digit"} | {m for m, o in offsets.items() if (n + o) % 3 == 0}
        assert len(executed) <= 2  # the per-frame delay stays flat
        for model, output in outputs.items():
            if output.provenance == "executed":
                last[model] = (n, output.value.tolist())
                assert output.age is None
            elif output.provenance == "reused":
                made, value = last.get(model, (0, None))  # frame 0: measured at start-up
                assert output.age == n - made and 1 <= output.age <= 2
                assert output.est_agreement == CURVE[output.age - 1]
                assert output.sources == (model,)
                if value is not None:
                    assert output.value.tolist() == value
            else:  # frame 0 only: the start-up's output has age 0 there
                assert (n, output.provenance) == (0, "prior")
                fallbacks += 1
    reused = sum(o.provenance == "reused" for f in kept.frames for o in f.values())
    assert reused == 2 * 12 - 8 - fallbacks  # each run/3 model runs on 4 of the 12 frames
    for payload in payloads:
        validate("output", payload)
    status = agent.status("running")
    validate("status", status)
    counters = status["counters"]
    assert counters["reused"] == reused  # type: ignore[index]
    assert counters["reuse_fallbacks"] == fallbacks  # type: ignore[index]
    selection = status["selection"]
    assert selection["plan"]["actions"] == {  # type: ignore[index]
        "digit": "run", "parity": "run/3", "inkbox": "run/3"}
    assert selection["schedule"] == {  # type: ignore[index]
        m: {"period": 3, "offset": o} for m, o in offsets.items()}
    assert all(status["models"][m]["loaded"] for m in MODELS)  # type: ignore[index]
    agent.close()


def test_an_output_older_than_its_curve_falls_back_to_the_prior(digits_fixture, models,
                                                                tmp_path: Path) -> None:
    build = with_reuse(digits_fixture.root, tmp_path / "build", {"parity": (0.9,)})
    agent, kept, stream = started(python_config(tmp_path, build))
    with_plan(agent, {"digit": Action("run"), "parity": Action("run", 4),
                      "inkbox": Action("prior")})
    for _ in range(8):
        agent.process(next(stream))
    served = [f["parity"].provenance for f in kept.frames]
    # executed, then reused at age 1, then the prior at ages 2 and 3 (the curve stops at 1)
    turn = served.index("executed")
    assert served[turn:turn + 4] == ["executed", "reused", "prior", "prior"]
    assert agent.counters.reuse_fallbacks >= 2
    agent.close()


def test_predict_prior_and_none_are_served_and_counted(digits_fixture, models,
                                                       tmp_path: Path) -> None:
    build = with_reuse(digits_fixture.root, tmp_path / "build", {})
    agent, kept, stream = started(python_config(tmp_path, build))
    with_plan(agent, {"digit": Action("run"), "parity": Action("prior"),
                      "inkbox": Action("none")})
    payloads = [p for _ in range(3) for p in model_entries(agent.process(next(stream)))]
    assert {p["model"] for p in payloads} == {"digit", "parity"}
    assert all(p["value"] == PARITY_PRIOR for p in payloads if p["model"] == "parity")
    assert agent.counters.prior == 3 and agent.counters.no_output == 3
    with_plan(agent, {"digit": Action("run"), "parity": Action("predict", sources=("digit",)),
                      "inkbox": Action("prior")})
    loaded = set()
    for link in agent.bundle.links:  # only the link the prediction reads is loaded
        try:
            agent.ensembles.runner(link)
            loaded.add((link.source, link.target))
        except KeyError:
            pass
    assert loaded == {("digit", "parity")}
    agent.process(next(stream))
    frame = kept.frames[-1]
    assert frame["parity"].provenance == "predicted" and frame["parity"].sources == ("digit",)
    assert frame["inkbox"].provenance == "prior"
    assert agent.status("running")["counters"]["no_output"] == 3  # type: ignore[index]
    agent.close()


def test_a_window_measures_reuse_curves_and_the_plan_is_remade(digits_fixture, models,
                                                               tmp_path: Path) -> None:
    """No curves in the bundle: the plan policy opens a window at once; its consecutive
    frames measure every model's curve, and the plan is made again with them."""
    build = with_reuse(digits_fixture.root, tmp_path / "build", {})
    config = python_config(tmp_path, build, policy="plan",
                           profiling="period_frames = 1000\nsample_frames = 8")
    agent, kept, stream = started(config)
    assert agent.selection is not None and agent.selection.plan is not None
    assert not agent.reuse_curves()
    for _ in range(8):
        agent.process(next(stream))
    assert agent.window.stats.windows == 1 and agent.counters.reselections >= 1
    curves = agent.reuse_curves()
    assert set(curves) == set(MODELS)
    for model in MODELS:  # 8 frames: ages 1..3 rest on at least 5 pairs
        outputs = np.stack([f[model].value for f in kept.frames])
        expected, _ = reuse_curve(agent.bundle.models[model], outputs, None, 3)
        assert curves[model] == pytest.approx(expected)
    problem = agent.problem()
    assert problem.reuse == curves
    assert {str(o.action) for o in standing_options(problem, "digit")} >= {
        "run/2", "run/3", "run/4"}
    status = agent.status("running")
    validate("status", status)
    assert set(status["profiling"]["reuse"]) == set(MODELS)  # type: ignore[index]
    agent.close()


def test_a_window_measures_the_priors_on_the_stream(digits_fixture, models,
                                                   tmp_path: Path) -> None:
    """The bundle's prior figures are the recording's; a window scores each model's prior
    against its exact output on the stream, and the plans and the served priors use both (the
    bundle's counted as `min_samples` frames), or the window's stream prior's figure, where
    that is higher."""
    build = with_reuse(digits_fixture.root, tmp_path / "build", {})
    config = python_config(tmp_path, build, policy="plan",
                           profiling="period_frames = 1000\nsample_frames = 8\nmin_samples = 8")
    agent, kept, stream = started(config)
    assert agent.problem().priors == {"digit": 0.1, "parity": 0.5, "inkbox": 0.3}
    for _ in range(8):  # the window opened at once (no reuse curves): every model runs
        agent.process(next(stream))
    assert agent.window.stats.windows == 1
    measured = {}
    bundle = {"digit": 0.1, "parity": 0.5, "inkbox": 0.3}
    for model in MODELS:
        exact = np.stack([f[model].value for f in kept.frames])
        prior = prior_outputs(agent.bundle.priors[model].output, len(exact))
        online = mean_agreement(agent.bundle.models[model], prior, exact)
        measured[model] = (8 * online + 8 * bundle[model]) / 16  # min_samples = 8
    stream = {m: f for m, (_, f) in agent.window.stream_priors.items()}
    assert all(stream[m] > measured[m] for m in stream)
    assert agent.problem().priors == pytest.approx({**measured, **stream})
    assert measured != pytest.approx(bundle)
    prior = agent._prior("digit")
    assert prior is not None
    assert prior.est_agreement == pytest.approx(stream.get("digit", measured["digit"]))
    agent.close()


def test_a_swapped_bundles_figures_replace_the_last_ones(digits_fixture, models,
                                                         tmp_path: Path) -> None:
    """After a bundle swap the plans read the new bundle's profile (its links' and priors'
    figures), not the one the agent started with or what windows measured on the old."""
    first = with_reuse(digits_fixture.root, tmp_path / "first", {})
    figures = {"digit": 0.7, "parity": 0.6, "inkbox": 0.2}
    second = with_reuse(digits_fixture.root, tmp_path / "second", {}, priors=figures)
    agent, _, _ = started(python_config(tmp_path, first, policy="plan"))
    agent.window.online.add("digit", PRIOR, 1.0)
    agent.swap_bundle(load_bundle(second / "bundle"))
    assert agent.profile == agent.bundle.profile and agent.problem().priors == figures
    assert agent.window.online.summary()["figures"] == 0
    agent.close()


def test_the_plan_policy_runs_models_every_pth_frame_under_a_delay_budget(
        digits_fixture, models, tmp_path: Path) -> None:
    """Reuse that agrees well, every model 1 ms and every link 1 ms, 2 ms a frame: the plan
    runs one model every frame and the others every other frame (agreement 0.99 each)."""
    build = with_reuse(digits_fixture.root, tmp_path / "build",
                       {m: (0.99, 0.9, 0.8) for m in MODELS})
    agent, kept, stream = started(python_config(tmp_path, build, policy="plan",
                                                budget="delay_ms = 2.0"))
    agent.costs.set_model_costs({m: Cost(1.0, 1.0) for m in MODELS})
    agent.costs.set_link_costs({pair: Cost(0.1, 1.0) for pair in agent.link_costs})
    selection = agent.reselect()
    assert selection.plan is not None
    actions = {m: str(a) for m, a in selection.plan.actions.items()}
    assert sorted(actions.values()) == ["run", "run/2", "run/2"]
    assert selection.plan.expected_agreement == pytest.approx((1 + 0.995 * 2) / 3)
    for _ in range(6):
        agent.process(next(stream))
    runs = [sum(o.provenance == "executed" for o in f.values()) for f in kept.frames]
    assert runs == [2] * 6  # the run model and one of the two run/2 ones, in turn
    # planned again: the agent's own time per frame, measured now, is kept out of the budget
    selection = agent.reselect()
    assert 0.0 < agent.reserved_ms == pytest.approx(min(agent.agent_ms(), 2.0))  # a busy box
    assert selection.use["delay_ms"] <= 2.0 - agent.reserved_ms + 1e-9
    status = agent.status("running")
    validate("status", status)
    assert status["selection"]["agent_ms_reserved"] == round(  # type: ignore[index]
        agent.reserved_ms, 4)
    agent.close()


def test_the_gate_runs_predicted_models_in_the_spare_delay(digits_fixture, models,
                                                           tmp_path: Path) -> None:
    build = with_reuse(digits_fixture.root, tmp_path / "build", {})
    config = load_config(python_config(tmp_path, build, budget="delay_ms = 1000.0"))
    config = config.model_copy(update={"selection": config.selection.model_copy(
        update={"gate": True})})
    agent = Agent.from_config(config)
    kept = Kept(agent.source.cameras)
    agent.payloads = kept
    stream = agent.start()
    with_plan(agent, {"digit": Action("run"), "parity": Action("predict", sources=("digit",)),
                      "inkbox": Action("prior")})
    assert set(agent.gate.models) == {"parity"}  # loaded for it; inkbox is not predicted
    assert agent.models["parity"].loaded
    payloads = [p for _ in range(4) for p in model_entries(agent.process(next(stream)))]
    for frame in kept.frames:  # spare delay for every frame: each prediction is replaced
        assert frame["parity"].provenance == "gated" and frame["parity"].sources == ("parity",)
        assert frame["inkbox"].provenance == "prior"
    for payload in payloads:
        validate("output", payload)
    assert agent.gate.calibration.summary() == {"parity": 4}  # each run calibrates
    delay = agent.gate.models["parity"]
    agent.gate.set({"parity": delay}, delay / 3)  # one run in three frames
    agent.gate.tokens = 0.0
    before = len(kept.frames)
    for _ in range(12):
        agent.process(next(stream))
    served = [f["parity"].provenance for f in kept.frames[before:]]
    assert 2 <= served.count("gated") <= 12 // 3 + 1
    assert set(served) == {"gated", "predicted"}
    # a prediction the gate weighed goes out with its calibrated confidence
    predicted = [f["parity"] for f in kept.frames[before:] if f["parity"].provenance
                 == "predicted"]
    assert all(o.confidence is not None and 0.0 <= o.confidence <= 1.0 for o in predicted)
    message = Payloads(agent.source.cameras).make(
        next(stream), [*predicted[:1], kept.frames[-1]["digit"]], agent.config.publish,
        agent.bundle.models)
    assert message is not None
    validate("frame", message)
    assert message["outputs"]["parity"]["confidence"] == predicted[0].confidence
    assert "confidence" not in message["outputs"]["digit"]
    status = agent.status("running")
    validate("status", status)
    assert status["counters"]["gated"] == 4 + served.count("gated")  # type: ignore[index]
    assert status["selection"]["gate"]["models"] == ["parity"]  # type: ignore[index]
    agent.close()


def test_two_cameras_keep_their_own_turns_and_ages(digits_fixture, models,
                                                    tmp_path: Path) -> None:
    """Two cameras read together ([[sources]]): each camera's frames are counted apart, a
    `run/p` model takes its turns on each, and a reused output is that camera's own."""
    build = with_reuse(digits_fixture.root, tmp_path / "build", {"parity": CURVE})
    text = python_config(tmp_path, build).read_text()
    one = f'[source]\ntype = "replay"\npath = "{build / "stream.npz"}"\n'
    assert one in text
    text = text.replace(one, "".join(
        f'[[sources]]\nid = "{name}"\ntype = "replay"\npath = "{build / "stream.npz"}"\n'
        for name in ("gate", "yard")))
    path = tmp_path / "two.toml"
    path.write_text(text)
    agent, kept, stream = started(path)
    with_plan(agent, {"digit": Action("run"), "parity": Action("run", 3),
                      "inkbox": Action("prior")})
    offset = agent.timetable.offsets["parity"]
    cameras: list[int] = []
    for frame in stream:  # the two sources' frames come in the order they are read
        cameras.append(frame.camera)
        agent.process(frame)
        if min(cameras.count(0), cameras.count(1)) >= 9:
            break
    assert min(cameras.count(0), cameras.count(1)) >= 9
    seen = {0: -1, 1: -1}
    last: dict[int, tuple[int, list[float]]] = {}
    reused = {0: 0, 1: 0}
    for camera, outputs in zip(cameras, kept.frames, strict=True):
        seen[camera] += 1
        n, parity = seen[camera], outputs["parity"]
        if (n + offset) % 3 == 0:
            assert parity.provenance == "executed"
            last[camera] = (n, parity.value.tolist())
        elif camera in last:
            assert parity.provenance == "reused" and parity.age == n - last[camera][0]
            assert parity.value.tolist() == last[camera][1]  # this camera's, not the other's
            reused[camera] += 1
    assert min(reused.values()) >= 4
    agent.close()
