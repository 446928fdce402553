"""`mlink-agent select`: every policy's choice on costs measured on this box, without the
loop; `--budget` overrides the config's budget."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import main as agent_main
from agent.selection import POLICIES
from offline_trainer.zoo import agent_config_text

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def config(digits_build) -> Path:
    path = digits_build.root / "agent-select.toml"
    path.write_text(agent_config_text("digits", digits_build.recipes(), 1883, 50.0))
    return path


def test_select_prints_every_policy(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = agent_main(["select", "--config", str(config), "--budget", "memory_mb=1.0", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == (1 if "error" in report["policies"]["activation"] else 0)  # the config's
    assert report["budget"] == {"memory_mb": 1.0}
    policies = report["policies"]
    assert set(policies) == set(POLICIES)
    assert set(report["costs"]["models"]) == {"digit", "parity", "inkbox"}
    assert len(report["costs"]["links"]) == 6
    assert len(policies["all"]["active"]) == 3
    for name in ("activation", "exact", "standalone"):
        if "error" not in policies[name]:
            assert policies[name]["use"]["memory_mb"] <= 1.0 + 1e-9
    if "error" not in policies["activation"]:
        exact = policies["exact"]["expected_agreement"]
        assert exact >= policies["activation"]["expected_agreement"] - 1e-12


def test_select_text_without_tensorflow(config: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "support" / "agent_without_tensorflow.py"), "select",
         "--config", str(config), "--budget", "memory_mb=1000,delay_ms=1000"],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    for name in POLICIES:
        line = next(line for line in lines if line.startswith(name))
        # a budget that fits everything: every policy activates all three models
        assert "predicted []" in line and "expected agreement 1.0000" in line


def test_select_rejects_a_bad_budget(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert agent_main(["select", "--config", str(config), "--budget", "memry_mb=3"]) == 2
    assert "budget.memry_mb" in capsys.readouterr().err
    assert agent_main(["select", "--config", str(config), "--budget", "delay_ms=-1"]) == 2
    assert "budget.delay_ms" in capsys.readouterr().err


def test_select_fails_when_nothing_fits(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert agent_main(["select", "--config", str(config), "--budget", "memory_mb=0.0001"]) == 1
    captured = capsys.readouterr()
    assert "activation" in captured.err and "nothing" in captured.err
    assert "no model fits the budget" in captured.out
