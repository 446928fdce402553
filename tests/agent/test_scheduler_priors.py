"""The agent serves a target's prior (the bundle's constant predictor) where its links cannot do
better: a model left without links, or under a standalone selection, gets the prior with
provenance `prior`, free, instead of no output; a bundle without priors behaves as before.
On the committed fixture (tests/data/digits3): no TensorFlow."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from agent.config import load_config
from agent.output import model_entries
from agent.scheduler import Agent
from agent.selection import Selection
from links_tflite.bundle import MANIFEST, PROFILE, write_manifest
from tests.agent.test_scheduler_failures import by_model, python_config
from tests.support.contract import validate

PARITY_PRIOR = [0.0, 1.0]  # "odd"


def with_priors(fixture: Path, root: Path, drop_links_into: str | None = None) -> Path:
    """The fixture's build with a prior for every model in its bundle (and, if asked, none of
    the links into one model, as the trainer leaves out links that cannot beat its prior)."""
    shutil.copytree(fixture / "bundle", root / "bundle")
    (root / "stream.npz").symlink_to(fixture / "stream.npz")
    bundle = root / "bundle"
    manifest = json.loads((bundle / MANIFEST).read_text())
    for key in ("files", "format", "format_version"):
        manifest.pop(key)
    manifest["priors"] = {"digit": {"output": np.eye(10)[1].tolist()},
                          "parity": {"output": PARITY_PRIOR},
                          "inkbox": {"output": [0.1, 0.1, 0.9, 0.9]}}
    if drop_links_into is not None:
        for link in [x for x in manifest["links"] if x["target"] == drop_links_into]:
            (bundle / link["file"]).unlink()
        manifest["links"] = [x for x in manifest["links"] if x["target"] != drop_links_into]
        for ensemble in manifest.get("ensembles", []):
            if ensemble["target"] == drop_links_into:
                ensemble["sources"], ensemble["weights"] = [], {}
    profile = json.loads((bundle / PROFILE).read_text())
    profile["priors"] = {"digit": 0.1, "parity": 0.5, "inkbox": 0.3}
    if drop_links_into is not None:
        profile["pairwise"][drop_links_into] = {}
        profile.get("ensembles", {}).pop(drop_links_into, None)
    (bundle / PROFILE).write_text(json.dumps(profile))
    write_manifest(bundle, manifest)
    return root


def run_with(config: Path, active: set[str], uses_links: bool, frames: int = 3
             ) -> tuple[Agent, list[dict[str, object]]]:
    """The agent on `frames` frames with `active` run and the others predicted (through links
    where `uses_links`, else nothing as `standalone` chooses), whatever fits the budget."""
    agent = Agent.from_config(load_config(config))
    stream = agent.start()
    others = tuple(m for m in agent.problem().models if m not in active)
    agent.apply(Selection("test", frozenset(active), others, {}, 0.0, uses_links))
    payloads = [p for _ in range(frames) for p in model_entries(agent.process(next(stream)))]
    agent.close()
    return agent, payloads


def test_a_model_without_links_gets_its_prior(digits_fixture, models, tmp_path: Path) -> None:
    build = with_priors(digits_fixture.root, tmp_path / "build", drop_links_into="parity")
    agent, payloads = run_with(python_config(tmp_path, build), {"digit"}, uses_links=True)
    parity = [p for p in payloads if p["model"] == "parity"]
    assert len(parity) == 3
    for payload in parity:
        validate("output", payload)
        assert payload["provenance"] == "prior" and payload["sources"] == []
        assert payload["value"] == PARITY_PRIOR and payload["est_agreement"] == 0.5
    inkbox = [p for p in payloads if p["model"] == "inkbox"]
    assert all(p["provenance"] == "predicted" for p in inkbox)  # its links still do better
    status = agent.status("running")
    assert status["counters"]["prior"] == 3  # type: ignore[index]


def test_standalone_serves_the_prior_for_what_it_does_not_run(digits_fixture, models,
                                                              tmp_path: Path) -> None:
    build = with_priors(digits_fixture.root, tmp_path / "build")
    _, payloads = run_with(python_config(tmp_path, build), {"digit"}, uses_links=False)
    served = {str(p["model"]): str(p["provenance"]) for p in payloads}
    assert served == {"digit": "executed", "parity": "prior", "inkbox": "prior"}


def test_without_priors_nothing_changes(digits_fixture, models, tmp_path: Path) -> None:
    _, payloads = run_with(python_config(tmp_path, digits_fixture.root), {"digit"},
                           uses_links=False)
    assert {p["model"] for p in payloads} == {"digit"}  # an older bundle: as before


def test_a_window_stream_prior_is_served_in_place_of_the_bundles(digits_fixture, models,
                                                                 tmp_path: Path) -> None:
    """After a profiling window, a model's prior is the constant that stood for its outputs
    there (agent.window) where that agreed better than the bundle's prior: served with its
    own figure, and in the plan's problem."""
    build = with_priors(digits_fixture.root, tmp_path / "build")
    config = python_config(tmp_path, build, policy="standalone",
                           profiling="period_frames = 0\nsample_frames = 12\nmin_samples = 2")
    agent = Agent.from_config(load_config(config))
    stream = agent.start()
    agent.request_reprofile()
    for _ in range(12):  # the window: every model runs
        agent.process(next(stream))
    assert agent.window.stats.windows == 1
    # the bundle's inkbox prior is a fixed box most of the stream's boxes barely overlap
    assert "inkbox" in agent.window.stream_priors
    value, figure = agent.window.stream_priors["inkbox"]
    assert agent.problem().priors["inkbox"] == figure
    agent.apply(Selection("test", frozenset({"digit"}), ("parity", "inkbox"), {}, 0.0, False))
    served = by_model(agent.process(next(stream)))
    agent.close()
    assert served["inkbox"]["provenance"] == "prior"
    assert served["inkbox"]["value"] == pytest.approx(value.tolist())
    assert served["inkbox"]["est_agreement"] == pytest.approx(figure, abs=1e-4)
    if "parity" not in agent.window.stream_priors:  # a coin: the bundle's may do as well
        assert served["parity"]["value"] == PARITY_PRIOR
