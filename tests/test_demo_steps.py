"""The demo's own steps against the session's digits build (the whole demo is the README's
main job; its slow part, training, is covered elsewhere)."""

from __future__ import annotations

import json

import numpy as np

from links_tflite.recording import Recording
from offline_trainer.demo import format_table, measured_budget, score


def test_budget_is_half_the_measured_model_memory(digits_build) -> None:
    budget = measured_budget(digits_build.root, 1883, digits_build.recipes())
    probe = json.loads((digits_build.root / "models" / "digit.json").read_text())
    assert 0.0 < budget < probe["memory_mb"] * 3  # half of the three models' summed memory


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
