"""The demo model zoo: train a workload's black-box models, export them, record them.

Output directory:
- `models/<id>.tflite` and `models/<id>.json` (the model card: task, input, parameters, file
  size, measured delay and memory, ground-truth agreement beside a trivial predictor's, seed);
- `recording.npz`: the models' outputs on the recording split (what links train on);
- `stream.npz`: the stream split with its frames (replayed by the agent's `replay` source);
- `agent.toml`: an agent config naming those models, the workload's source and `bundle/`.
Work whose output is up to date (same seed and recipe) is skipped.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from agent.costs import median_delay_ms, memory_delta_mb
from links_tflite.agreement import mean_agreement
from links_tflite.interpreter import TFLiteRunner
from links_tflite.recording import Recording
from links_tflite.tasks import TaskSpec
from offline_trainer.export import convert
from offline_trainer.workloads import ModelRecipe, Workload, WorkloadData, get_workload
from offline_trainer.workloads.builders import black_box, presence_box_targets

log = logging.getLogger(__name__)


def measure_delay_ms(runner: TFLiteRunner, example: np.ndarray, runs: int = 50) -> float:
    """Median single-frame delay after a warm-up."""
    return median_delay_ms(lambda: runner.run_one(example), warmup=5, runs=runs) or 0.0


def training_targets(task: TaskSpec, truth: np.ndarray) -> np.ndarray:
    """What the Keras model is fitted to: one-hot tokens for sequences, (is there a box, box)
    for localization, the truth otherwise."""
    if task.kind == "sequence":
        return np.eye(task.vocab_size, dtype=np.float32)[truth.astype(np.int64)]
    if task.kind == "localization":
        return presence_box_targets(truth)
    return truth


def trivial_prediction(task: TaskSpec, train: np.ndarray, n: int) -> np.ndarray:
    """The best constant answer learnt from training truth: majority class(es) or mean."""
    if task.kind == "single_label":
        constant = np.eye(task.dim, dtype=np.float32)[np.bincount(train.argmax(1)).argmax()]
    elif task.kind == "multi_label":
        constant = (train.mean(axis=0) >= 0.5).astype(np.float32)
    elif task.kind == "sequence":
        common = Counter(map(tuple, train.astype(int).tolist())).most_common(1)[0][0]
        constant = np.asarray(common, dtype=np.float32)
    elif task.kind == "localization":  # the mean box, or "nothing there" if that scores more
        candidates = [train.mean(axis=0), np.zeros(4, dtype=np.float32)]
        constant = max(candidates, key=lambda box: mean_agreement(
            task, np.repeat(box[None, :], len(train), axis=0), train))
    else:
        constant = train.mean(axis=0)
    return np.repeat(constant[None, :], n, axis=0)


def _card_is_current(card_path: Path, model_path: Path, seed: int, recipe: ModelRecipe) -> bool:
    if not (card_path.is_file() and model_path.is_file()):
        return False
    card = json.loads(card_path.read_text())
    return (card.get("seed"), card.get("description"), card.get("epochs")) == (
        seed, recipe.description, recipe.epochs)


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
    y = training_targets(recipe.task, zoo.ground_truth[recipe.model_id])
    model = recipe.build(tuple(x.shape[1:]))
    model.fit(x, y, epochs=recipe.epochs, batch_size=32, verbose=0)
    exported = convert(black_box(model, recipe.task), model_path, "float32")
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
        frames = data.inputs[recipe.input_modality]
        outputs[recipe.model_id] = np.concatenate(
            [runner(frames[i:i + 256]) for i in range(0, len(frames), 256)])
    return Recording(
        workload=workload,
        frame_ids=data.frame_ids,
        ts=data.ts,
        tasks={r.model_id: r.task for r in recipes},
        outputs=outputs,
        inputs=dict(data.inputs) if with_inputs else {},
        ground_truth={r.model_id: data.ground_truth[r.model_id] for r in recipes},
        camera_ids=data.camera_ids,
    )


def measure_card(recipe: ModelRecipe, model_file: Path, zoo: WorkloadData, held_out: Recording,
                 example: np.ndarray) -> dict[str, Any]:
    """What is measured: ground-truth agreement on held-out frames (the recording split, never
    trained on) beside the trivial predictor's, single-frame delay, and the memory its
    interpreter takes."""
    truth = held_out.ground_truth[recipe.model_id]
    loaded: list[TFLiteRunner] = []
    memory = memory_delta_mb(lambda: loaded.append(TFLiteRunner(model_file)) or
                             loaded[0].run_one(example))
    trivial = trivial_prediction(recipe.task, zoo.ground_truth[recipe.model_id], len(truth))
    return {
        "ground_truth_agreement": mean_agreement(recipe.task, held_out.outputs[recipe.model_id],
                                                 truth),
        "trivial_agreement": mean_agreement(recipe.task, trivial, truth),
        "held_out_frames": len(held_out),
        "delay_ms": measure_delay_ms(loaded[0], example),
        "memory_mb": memory,
    }


def toml_inline(table: dict[str, Any]) -> str:
    """A flat dict of strings, numbers and string lists as a TOML inline table."""
    return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in table.items()) + " }"


# What the config `mlink-train zoo` writes runs as the product does: paced, looping, a budget
# that leaves several models to be predicted, the optimal policy.
ZOO_BUDGET_SHARE = 1 / 3  # of the models' memory as measured when the zoo is built
ZOO_FPS = {"digits": 10.0, "city": 4.0}  # the city stream: 4 cameras at 1 frame/s each


def agent_config_text(workload: str, recipes: list[ModelRecipe], port: int = 1883,
                      memory_mb: float | None = None, seed: int = 0, *,
                      policy: str = "activation", fps: float | None = None,
                      loop: bool = False, budget_note: str = "") -> str:
    """A ready-to-run agent config for this zoo (paths relative to the config file). The
    defaults run the stream once as fast as it comes (tests, benchmarks); `build_zoo`'s
    agent.toml paces and loops it under a budget."""
    budget = f"memory_mb = {memory_mb:.4f}" if memory_mb else "# memory_mb = 4.0"
    source = dict(get_workload(workload).source_config(seed))
    if fps is not None:
        source["fps"] = fps
    if loop and source.get("type") == "replay":
        source["loop"] = True
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
        *(f"{key} = {json.dumps(value)}" for key, value in source.items()),
        "",
        "[budget]",
        f"{budget}   # MB for models + links{budget_note or ', measured on this box'}",
        "# delay_ms = 1.0    # per frame",
        "",
        "[selection]",
        f'policy = "{policy}"',
    ]
    for recipe in recipes:
        lines += [
            "",
            "[[models]]",
            f'id = "{recipe.model_id}"',
            'adapter = "tflite"',
            f'path = "models/{recipe.model_id}.tflite"',
            f'input = "{recipe.input_modality}"',
            f"task = {toml_inline(recipe.task.to_dict())}",
        ]
    return "\n".join(lines) + "\n"


def zoo_agent_config(workload: str, recipes: list[ModelRecipe], out: Path, seed: int) -> str:
    """The zoo's agent.toml: paced and looping, under a third of the models' memory as their
    cards measured it, with the optimal policy (`mlink-agent select` shows what it runs)."""
    memory = sum(float(json.loads((out / "models" / f"{r.model_id}.json").read_text())
                       .get("memory_mb") or 0.0) for r in recipes)
    note = (f"; a third of the {len(recipes)} models' {memory:.2f} MB measured when the zoo "
            f"was built: several run, the rest are predicted")
    return agent_config_text(workload, recipes, 1883, memory * ZOO_BUDGET_SHARE or None, seed,
                             policy="exact", fps=ZOO_FPS.get(workload), loop=True,
                             budget_note=note)


def _stamp(workload: Workload, seed: int, recipes: list[ModelRecipe]) -> dict[str, Any]:
    return {
        "workload": workload.name,
        "seed": seed,
        "sizes": list(getattr(workload, "sizes", ())),
        "recipes": [[r.model_id, r.description, r.epochs] for r in recipes],
    }


def _zoo_is_current(out: Path, stamp: dict[str, Any]) -> bool:
    stamp_path = out / "zoo.json"
    needed = [out / "recording.npz", out / "stream.npz", out / "agent.toml"]
    needed += [out / "models" / f"{m}.{ext}" for m, _, _ in stamp["recipes"]
               for ext in ("tflite", "json")]
    return (stamp_path.is_file() and json.loads(stamp_path.read_text()) == stamp
            and all(p.is_file() for p in needed))


def build_zoo(workload_name: str, out: Path, seed: int = 0,
              workload: Workload | None = None) -> dict[str, Any]:
    """Everything a workload needs before links: models, recording, stream, agent config.
    Skipped whole when the zoo was built with the same seed and recipes; models whose card
    is current are skipped one by one."""
    workload = workload or get_workload(workload_name)
    recipes = workload.recipes()
    stamp = _stamp(workload, seed, recipes)
    if _zoo_is_current(out, stamp):
        log.info("zoo %s is up to date", out)
        return {"models": {r.model_id: str(out / "models" / f"{r.model_id}.tflite")
                           for r in recipes}, "skipped": True}
    out.mkdir(parents=True, exist_ok=True)
    (out / "zoo.json").unlink(missing_ok=True)
    splits = workload.load(seed)
    files = {}
    for recipe in tqdm(recipes, desc=f"zoo {workload_name}", unit="model"):
        files[recipe.model_id] = build_model(recipe, splits.zoo, seed, out)
    recording = record(workload_name, recipes, files, splits.recording, with_inputs=False)
    recording.save(out / "recording.npz")
    stream = record(workload_name, recipes, files, splits.stream, with_inputs=True)
    stream.save(out / "stream.npz")
    for recipe in recipes:
        card_path = files[recipe.model_id].with_suffix(".json")
        card = json.loads(card_path.read_text())
        example = stream.inputs[recipe.input_modality][0]
        card.update(measure_card(recipe, files[recipe.model_id], splits.zoo, recording, example))
        card_path.write_text(json.dumps(card, indent=2) + "\n")
    (out / "agent.toml").write_text(zoo_agent_config(workload_name, recipes, out, seed))
    (out / "zoo.json").write_text(json.dumps(stamp, indent=2) + "\n")
    return {"models": {k: str(v) for k, v in files.items()}, "recording": len(recording),
            "stream": len(stream)}
