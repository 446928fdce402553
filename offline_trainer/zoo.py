"""The demo model zoo: train a workload's black-box models, export them, record them.

Output directory:
- `models/<id>.tflite` and `models/<id>.json` (the model card: task, input, size,
  ground-truth accuracy, measured delay, the seed it was built with);
- `recording.npz`: the models' outputs on the recording split (what links train on);
- `stream.npz`: the stream split with its frames, replayed by the agent's `replay` source;
- `agent.toml`: an agent config naming those models, the stream and the bundle directory.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from links_tflite.agreement import mean_agreement
from links_tflite.interpreter import TFLiteRunner
from links_tflite.recording import Recording
from offline_trainer.export import convert
from offline_trainer.workloads import ModelRecipe, WorkloadData, get_workload

log = logging.getLogger(__name__)


def measure_delay_ms(runner: TFLiteRunner, example: np.ndarray, runs: int = 50) -> float:
    """Median single-frame delay after a warm-up."""
    for _ in range(5):
        runner.run_one(example)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        runner.run_one(example)
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def _card_is_current(card_path: Path, model_path: Path, seed: int, recipe: ModelRecipe) -> bool:
    if not (card_path.is_file() and model_path.is_file()):
        return False
    card = json.loads(card_path.read_text())
    return card.get("seed") == seed and card.get("description") == recipe.description and card.get(
        "epochs") == recipe.epochs


def build_model(recipe: ModelRecipe, zoo: WorkloadData, seed: int, out: Path) -> Path:
    """Train one recipe on the zoo split and write its .tflite file and model card."""
    import keras

    model_path = out / "models" / f"{recipe.model_id}.tflite"
    card_path = model_path.with_suffix(".json")
    if _card_is_current(card_path, model_path, seed, recipe):
        log.info("%s: up to date, skipped", model_path)
        return model_path
    keras.utils.set_random_seed(seed)
    x = zoo.inputs[recipe.input_modality]
    y = zoo.ground_truth[recipe.model_id]
    model = recipe.build(tuple(x.shape[1:]))
    model.fit(x, y, epochs=recipe.epochs, batch_size=32, verbose=0)
    exported = convert(model, model_path, "float32")
    card = {
        "model": recipe.model_id,
        "description": recipe.description,
        "task": recipe.task.to_dict(),
        "input": {"modality": recipe.input_modality, "shape": list(x.shape[1:])},
        "parameters": int(model.count_params()),
        "file_bytes": exported.size_bytes,
        "seed": seed,
        "epochs": recipe.epochs,
    }
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    return model_path


def record(workload: str, recipes: list[ModelRecipe], files: dict[str, Path], data: WorkloadData,
           with_inputs: bool) -> Recording:
    """Run every model's TFLite file on every frame: the exact outputs links learn from."""
    outputs = {}
    for recipe in recipes:
        runner = TFLiteRunner(files[recipe.model_id])
        outputs[recipe.model_id] = runner(data.inputs[recipe.input_modality])
    return Recording(
        workload=workload,
        frame_ids=data.frame_ids,
        ts=data.ts,
        tasks={r.model_id: r.task for r in recipes},
        outputs=outputs,
        inputs=dict(data.inputs) if with_inputs else {},
        ground_truth={r.model_id: data.ground_truth[r.model_id] for r in recipes},
    )


def _complete_cards(recipes: list[ModelRecipe], files: dict[str, Path], stream: Recording) -> None:
    """Add what is measured on held-out frames: ground-truth agreement and delay."""
    for recipe in recipes:
        card_path = files[recipe.model_id].with_suffix(".json")
        card = json.loads(card_path.read_text())
        runner = TFLiteRunner(files[recipe.model_id])
        example = stream.inputs[recipe.input_modality][0]
        card["ground_truth_agreement"] = mean_agreement(
            recipe.task, stream.outputs[recipe.model_id], stream.ground_truth[recipe.model_id]
        )
        card["delay_ms"] = measure_delay_ms(runner, example)
        card_path.write_text(json.dumps(card, indent=2) + "\n")


def agent_config_text(workload: str, recipes: list[ModelRecipe], port: int = 1883,
                      memory_mb: float | None = None) -> str:
    """A ready-to-run agent config for this zoo (paths relative to the config file)."""
    budget = f"memory_mb = {memory_mb:.4f}" if memory_mb else "# memory_mb = 4.0"
    lines = [
        f"# Agent config for the {workload} zoo, written by `mlink-train zoo`.",
        f'device_id = "{workload}-demo"',
        "",
        "[mqtt]",
        'host = "127.0.0.1"',
        f"port = {port}",
        "",
        "[bundle]",
        'path = "bundle"',
        "",
        "[source]",
        'type = "replay"',
        'path = "stream.npz"',
        "",
        "[budget]",
        f"{budget}   # MB for models + links, measured on this box",
        "# delay_ms = 1.0    # per frame",
        "",
        "[selection]",
        'policy = "activation"',
    ]
    for recipe in recipes:
        lines += [
            "",
            "[[models]]",
            f'id = "{recipe.model_id}"',
            'adapter = "tflite"',
            f'path = "models/{recipe.model_id}.tflite"',
            f'input = "{recipe.input_modality}"',
        ]
    return "\n".join(lines) + "\n"


def build_zoo(workload_name: str, out: Path, seed: int = 0) -> dict[str, Any]:
    """Everything a workload needs before links: models, recording, stream, agent config."""
    workload = get_workload(workload_name)
    out.mkdir(parents=True, exist_ok=True)
    splits = workload.load(seed)
    recipes = workload.recipes()
    files = {}
    for recipe in tqdm(recipes, desc=f"zoo {workload_name}", unit="model"):
        files[recipe.model_id] = build_model(recipe, splits.zoo, seed, out)
    recording = record(workload_name, recipes, files, splits.recording, with_inputs=False)
    recording.save(out / "recording.npz")
    stream = record(workload_name, recipes, files, splits.stream, with_inputs=True)
    stream.save(out / "stream.npz")
    _complete_cards(recipes, files, stream)
    (out / "agent.toml").write_text(agent_config_text(workload_name, recipes))
    return {"models": {k: str(v) for k, v in files.items()}, "recording": len(recording),
            "stream": len(stream)}
