"""The demo's own steps against the session's digits build (the whole demo is the README's
main job; its slow part, training, is covered elsewhere)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from links_tflite.recording import Recording
from offline_trainer.demo import format_table, plot, predicting_budget, score


def test_the_budget_leaves_models_to_predict(digits_build) -> None:
    budget, selection = predicting_budget(digits_build.root, 1883, digits_build.recipes(),
                                          least=1)
    cards = [json.loads((digits_build.root / "models" / f"{m}.json").read_text())
             for m in ("digit", "parity", "inkbox")]
    assert 0.0 < budget < sum(c["memory_mb"] for c in cards) * 2
    assert len(selection.predicted) >= 1 and selection.use["memory_mb"] <= budget + 1e-9


def test_score_and_table(digits_build) -> None:
    stream = Recording.load(digits_build.stream)
    collected = [
        {"frame_id": int(stream.frame_ids[i]), "model": "parity", "provenance": "executed",
         "sources": ["parity"], "value": stream.outputs["parity"][i].tolist()}
        for i in range(10)
    ] + [
        {"frame_id": int(stream.frame_ids[i]), "model": "digit", "provenance": "predicted",
         "sources": ["parity"], "value": np.eye(10)[0].tolist()}
        for i in range(10)
    ]
    table = {row["model"]: row for row in score(collected, stream)}
    assert table["parity"]["agreement"] == 1.0 and table["parity"]["messages"] == 10
    expected = float(np.mean(stream.outputs["digit"][:10].argmax(axis=1) == 0))
    assert table["digit"]["agreement"] == expected
    assert table["inkbox"]["messages"] == 0
    assert "mean agreement over all models" in format_table(list(table.values()), 12.5, 1.0)


def test_the_picture(tmp_path) -> None:
    table = [{"model": "a", "provenance": "executed", "agreement": 1.0, "sources": "a"},
             {"model": "b", "provenance": "predicted", "agreement": 0.8, "sources": "a"},
             {"model": "c", "provenance": "none", "messages": 0}]
    costs = {"models": {"a": {"memory_mb": 2.0}}, "links": {"a->b": {"memory_mb": 0.5}}}
    path = plot(table, costs, 3.0, tmp_path / "demo.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_the_zoos_agent_config_shows_the_product(digits_build) -> None:
    """Paced, looping, the optimal policy, under a third of the models' memory as their cards
    measured it: several models predicted, not every model run."""
    from agent.config import load_config

    config = load_config(digits_build.root / "agent.toml")
    cards = [json.loads(p.read_text()) for p in (digits_build.root / "models").glob("*.json")]
    total = sum(c["memory_mb"] for c in cards)
    assert config.budget.memory_mb == pytest.approx(total / 3, rel=1e-3)
    assert config.source.fps == 10.0 and config.source.loop  # type: ignore[union-attr]
    assert config.selection.policy == "exact"
