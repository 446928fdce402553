"""End to end through a real Mosquitto: the agent publishes every model's output for every
frame exactly once, with the right provenance; executed outputs equal the model files'."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from devtools.broker import LocalBroker
from devtools.subscriber import Collector
from links_tflite.bundle import load_bundle
from links_tflite.ensemble import EnsemblePredictor
from links_tflite.interpreter import TFLiteRunner
from links_tflite.recording import Recording
from offline_trainer.zoo import agent_config_text

ROOT = Path(__file__).resolve().parents[2]
FRAMES = 60
MEMORY_BUDGET_MB = 1.0  # below the digit model's own cost: something must be predicted


def run_agent(config: Path, frames: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "tests" / "support" / "agent_without_tensorflow.py"), "run",
         "--config", str(config), "--frames", str(frames)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )


@pytest.fixture()
def broker():
    with LocalBroker() as running:
        yield running


def test_every_output_arrives_once_with_provenance(digits_build, broker) -> None:
    config = digits_build.root / f"agent-{broker.port}.toml"
    config.write_text(agent_config_text("digits", digits_build.recipes(), broker.port,
                                        MEMORY_BUDGET_MB))
    collector = Collector("127.0.0.1", broker.port, "mlink", "digits-demo").start()
    result = run_agent(config, FRAMES)
    assert result.returncode == 0, result.stderr[-3000:]
    stream = Recording.load(digits_build.stream)
    models = [r.model_id for r in digits_build.recipes()]
    assert collector.wait_for_outputs(FRAMES * len(models), timeout_s=20)
    collector.stop()

    # exactly once per (frame, model), for the first FRAMES frames of the stream
    counts = collector.counts()
    expected = {(int(f), m) for f in stream.frame_ids[:FRAMES] for m in models}
    assert set(counts) == expected
    assert set(counts.values()) == {1}

    # provenance follows the selection the agent announced in its retained status
    selection = collector.status["selection"]
    assert collector.status["frames"] == FRAMES
    assert selection["predicted"], "the budget should force at least one predicted model"
    outputs = collector.snapshot()
    for output in outputs:
        want = "executed" if output["model"] in selection["active"] else "predicted"
        assert output["provenance"] == want
        assert output["latency_ms"] >= 0 and 0.0 <= output["est_agreement"] <= 1.0

    # executed values equal running the model files directly; predicted ones equal the
    # ensemble of the int8 links run directly through links_tflite
    row_of = {int(f): i for i, f in enumerate(stream.frame_ids)}
    runners = {m: TFLiteRunner(digits_build.model_file(m)) for m in models}
    ensembles = EnsemblePredictor(load_bundle(digits_build.bundle))
    ensembles.prepare(selection["active"], selection["predicted"])
    for output in outputs:
        frame = stream.inputs["image"][row_of[output["frame_id"]]]
        value = np.asarray(output["value"], dtype=np.float32)
        if output["provenance"] == "executed":
            np.testing.assert_array_equal(value, runners[output["model"]].run_one(frame))
        else:
            sources = {s: runners[s].run_one(frame) for s in output["sources"]}
            expected_value = ensembles.predict(output["model"], sources).value
            np.testing.assert_allclose(value, expected_value, rtol=1e-5, atol=1e-6)

    assert collector.availability[-1] == "stopped"
    assert "online" in collector.availability


def test_unreachable_broker_is_a_clear_error(digits_build, tmp_path: Path) -> None:
    from devtools.broker import free_port

    config = tmp_path / "agent.toml"
    text = agent_config_text("digits", digits_build.recipes(), free_port(), 5.0)
    text = text.replace("[mqtt]\n", "[mqtt]\nconnect_timeout_s = 1\n", 1)  # 10 s by default
    config.write_text(text.replace('path = "', f'path = "{digits_build.root}/'))
    result = run_agent(config, 5)
    assert result.returncode == 2
    assert "no connection to the MQTT broker" in result.stderr
    assert "within 1s" in result.stderr  # the configured time, not the default
