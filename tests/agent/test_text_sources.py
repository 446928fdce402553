"""The `lines` and `jsonl` sources: one record a line handed to python models as a `str` or a
`dict`, bounded lines, malformed records counted and skipped; and end to end with the small
committed files: record (inputs only, then every model's outputs) -> train links -> run."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from agent.cli import main as agent_main
from agent.config import load_config, validate
from agent.output import model_entries
from agent.sources import open_sources
from links_tflite.recording import Recording
from tests.support import text_models

DATA = Path(__file__).resolve().parents[1] / "data"
REVIEWS = DATA / "reviews.txt"
ORDERS = DATA / "orders.jsonl"


def source(tmp_path: Path, **fields):
    data = {"device_id": "t", "bundle": {"path": "b"}, "source": fields,
            "models": [{"id": "m", "adapter": "python", "entry": "tests.support.text_models:words",
                        "input": fields.get("modality", "text")}]}
    return open_sources(validate(data, tmp_path))


def test_lines_from_a_file_and_a_folder_with_bounded_lines(tmp_path: Path, caplog) -> None:
    frames = list(source(tmp_path, type="lines", path=str(REVIEWS)).frames())
    expected = [line for line in REVIEWS.read_text().splitlines() if line.strip()]
    assert [f.modalities["text"] for f in frames] == expected
    assert [f.frame_id for f in frames] == list(range(150))

    folder = tmp_path / "feed"
    folder.mkdir()
    (folder / "b.log").write_bytes(b"second file\r\n")
    (folder / "a.log").write_bytes(b"first\n" + b"x" * 100 + b"\nok \xff\xfe\nlast")
    (folder / "c.txt").write_text("not matched\n")
    feed = source(tmp_path, type="lines", path=str(folder), pattern="*.log", max_line_bytes=64,
                  id="feed", modality="line")
    with caplog.at_level(logging.WARNING):
        texts = [f.modalities["line"] for f in feed.frames()]
    assert texts == ["first", "last", "second file"]
    assert feed.stats() == {"feed": {"records": 3, "too_long": 1, "not_utf8": 1,
                                     "malformed": 0}}
    assert f"{folder / 'a.log'}:2: longer than 64 bytes" in caplog.text
    assert f"{folder / 'a.log'}:3: not UTF-8" in caplog.text
    with pytest.raises(FileNotFoundError, match="no files match"):
        source(tmp_path, type="lines", path=str(folder), pattern="*.csv")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        source(tmp_path, type="lines", path=str(tmp_path / "missing.txt"))


def test_jsonl_records_are_objects_and_malformed_lines_are_counted(tmp_path: Path,
                                                                   caplog) -> None:
    extra = tmp_path / "more.jsonl"
    extra.write_text('{"qty": NaN}\n{"a": ' + "[" * 100_000 + "\n" + '{"ok": true}\n')
    with caplog.at_level(logging.WARNING):
        orders = source(tmp_path, type="jsonl", path=str(ORDERS))
        records = [f.modalities["record"] for f in orders.frames()]
        odd = source(tmp_path, type="jsonl", path=str(extra), max_line_bytes=1 << 20)
        assert [f.modalities["record"] for f in odd.frames()] == [{"ok": True}]
    assert len(records) == 150 and all(isinstance(r, dict) for r in records)
    assert records[0] == json.loads(ORDERS.read_text().splitlines()[0])
    assert orders.stats()["0"]["malformed"] == 2
    assert f"{ORDERS}:42: not JSON" in caplog.text  # the line cut short
    assert f"{ORDERS}:93: a JSON list, not an object" in caplog.text
    assert odd.stats()["0"]["malformed"] == 2
    assert "NaN is not a JSON number" in caplog.text


def test_record_inputs_only_from_text(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(text_config("lines", REVIEWS, "text", ("exclaims",), memory_mb=None))
    out = tmp_path / "inputs.npz"
    assert agent_main(["record", "--config", str(config), "--frames", "20", "--out", str(out),
                       "--inputs-only"]) == 0
    recording = Recording.load(out)
    assert recording.models == [] and len(recording) == 20
    lines = [line for line in REVIEWS.read_text().splitlines() if line.strip()]
    assert recording.inputs["text"].tolist() == lines[:20]
    assert recording.cameras == ["reviews"]


def test_json_records_replay_as_dicts(tmp_path: Path) -> None:
    """A recording holds JSON records as their text (no pickling) and names them, so a replay
    hands the models the same dicts the jsonl source did."""
    config = tmp_path / "agent.toml"
    config.write_text(text_config("jsonl", ORDERS, "record", ("bulk",), memory_mb=None))
    out = tmp_path / "inputs.npz"
    assert agent_main(["record", "--config", str(config), "--frames", "30", "--out", str(out),
                       "--inputs-only"]) == 0
    assert Recording.load(out).json_inputs == ["record"]
    original = [f.modalities["record"] for f in source(tmp_path, type="jsonl",
                                                       path=str(ORDERS)).frames()][:30]
    replayed = [f.modalities["record"] for f in source(tmp_path, type="replay",
                                                       path=str(out)).frames()]
    assert replayed == original and all(type(r) is dict for r in replayed)
    lines = [f.modalities["text"] for f in source(tmp_path, type="lines",
                                                  path=str(REVIEWS)).frames()]
    assert all(type(t) is str for t in lines)


# Per source kind, a model holding BALLAST_MB (left out by the budget, so predicted) and a
# light one it is predicted from: two links to train.
MODELS = {
    "lines": {"shouting": ("Shouting", {"kind": "single_label", "dim": 2,
                                        "labels": ["calm", "shouting"]}),
              "exclaims": ("exclaims", {"kind": "single_label", "dim": 2,
                                        "labels": ["no", "yes"]})},
    "jsonl": {"express": ("Express", {"kind": "single_label", "dim": 2,
                                      "labels": ["standard", "express"]}),
              "bulk": ("bulk", {"kind": "single_label", "dim": 2,
                                "labels": ["small", "bulk"]})},
}


def text_config(kind: str, path: Path, modality: str, models: tuple[str, ...] | None = None,
                memory_mb: float | None = 20.0) -> str:
    chosen = MODELS["lines" if modality == "text" else "jsonl"]
    lines = ['device_id = "text-box"', "[bundle]", 'path = "bundle"', "[source]",
             f'id = "{"reviews" if kind == "lines" else "orders"}"', f'type = "{kind}"',
             f'path = "{path}"', f'modality = "{modality}"', "[selection]",
             'policy = "activation"', "[profiling]", "warmup_runs = 1", "delay_runs = 5"]
    if memory_mb is not None:
        lines += ["[budget]", f"memory_mb = {memory_mb}"]
    for model_id in models or tuple(chosen):
        entry, task = chosen[model_id]
        task_text = ", ".join(f"{k} = {json.dumps(v)}" for k, v in task.items())
        lines += ["[[models]]", f'id = "{model_id}"', 'adapter = "python"',
                  f'entry = "tests.support.text_models:{entry}"', f'input = "{modality}"',
                  f"task = {{{task_text}}}"]
    return "\n".join(lines) + "\n"


def exact_output(entry: str, record: object) -> np.ndarray:
    model = getattr(text_models, entry)
    return (model() if isinstance(model, type) else model)(record)


@pytest.mark.trainer
@pytest.mark.parametrize(("kind", "path", "modality"), [("lines", REVIEWS, "text"),
                                                         ("jsonl", ORDERS, "record")])
def test_text_record_links_run(kind: str, path: Path, modality: str, tmp_path: Path) -> None:
    from agent.scheduler import Agent
    from offline_trainer.cli import main as train_main
    from tests.support.contract import validate as check_schema

    config = tmp_path / "agent.toml"
    config.write_text(text_config(kind, path, modality))
    recording = tmp_path / "recording.npz"
    assert agent_main(["record", "--config", str(config), "--frames", "150", "--out",
                       str(recording), "--with-frames"]) == 0
    rec = Recording.load(recording)
    assert len(rec) == 150 and set(rec.models) == set(MODELS[kind])
    assert rec.inputs[modality].dtype.kind == "U"  # text, or JSON text: no pickling
    assert all(c["memory_mb"] is not None for c in rec.costs.values())
    assert train_main(["links", str(recording), "--out", str(tmp_path / "bundle"),
                       "--epochs", "20", "--train-fraction", "0.6"]) == 0

    agent = Agent.from_config(load_config(config))
    frames = agent.start()
    ballasted = "shouting" if kind == "lines" else "express"
    assert agent.selection is not None and agent.selection.predicted == (ballasted,), \
        agent.selection
    agree, served = 0, 0
    camera = "reviews" if kind == "lines" else "orders"
    for frame in frames:
        for payload in model_entries(agent.process(frame)):
            check_schema("output", payload)
            assert payload["camera"] == camera
            if payload["provenance"] not in ("predicted", "prior"):  # links, or the prior
                continue                                                 # where none beats it
            model_id = str(payload["model"])
            exact = exact_output(MODELS[kind][model_id][0], frame.modalities[modality])
            value = np.asarray(payload["value"])
            served += 1
            agree += int(np.argmax(value) == np.argmax(exact))
    agent.close()
    status = agent.status("stopped")
    check_schema("status", status)
    skipped = {"lines": 0, "jsonl": 2}[kind]  # orders.jsonl: one cut short, one an array
    assert status["sources"][camera]["malformed"] == skipped
    assert served == 150  # served on every record
    assert agree / served >= 0.6


def test_many_sources_take_turns_and_keep_their_camera(tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("one\ntwo\nthree\n")
    data = {"device_id": "t", "bundle": {"path": "b"},
            "sources": [{"type": "lines", "path": str(REVIEWS), "id": "reviews"},
                        {"type": "lines", "path": str(short), "id": "short"},
                        {"type": "jsonl", "path": str(ORDERS), "id": "orders",
                         "modality": "text"}],
            "models": [{"id": "m", "adapter": "python", "entry": "tests.support.text_models:words",
                        "input": "text"}]}
    many = open_sources(validate(data, tmp_path))
    assert many.cameras == ("reviews", "short", "orders") and many.modalities == ("text",)
    frames = list(many.frames())
    assert len(frames) == 150 + 3 + 150
    assert len({f.frame_id for f in frames}) == len(frames)
    by_camera = {c: [f for f in frames if f.camera == c] for c in range(3)}
    assert [f.modalities["text"] for f in by_camera[1]] == ["one", "two", "three"]
    assert all(isinstance(f.modalities["text"], dict) for f in by_camera[2])
    assert set(many.stats()) == {"reviews", "short", "orders"}
    # in turn: each of the first frames comes from another camera than the one before
    assert [f.camera for f in frames[:3]] != [frames[0].camera] * 3
    with pytest.raises(FileNotFoundError, match=r"missing\.txt"):
        open_sources(validate({**data, "sources": [*data["sources"], {
            "type": "lines", "path": str(tmp_path / "missing.txt"), "id": "x"}]}, tmp_path))


def test_validate_config_names_the_one_of_many_sources_that_cannot_open(tmp_path: Path) -> None:
    from agent.preflight import check_source

    data = {"device_id": "t", "bundle": {"path": "b"},
            "sources": [{"type": "lines", "path": str(REVIEWS), "id": "reviews"},
                        {"type": "lines", "path": str(tmp_path / "missing.txt"), "id": "x"}],
            "models": [{"id": "m", "adapter": "python", "entry": "tests.support.text_models:words",
                        "input": "text"}]}
    problems = check_source(validate(data, tmp_path))
    assert [path for path, _ in problems] == ["sources.1"]
    assert "missing.txt" in problems[0][1]
    one = {**data, "sources": [], "source": data["sources"][0]}
    assert check_source(validate(one, tmp_path)) == []
