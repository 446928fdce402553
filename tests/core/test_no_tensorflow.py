"""The device side never imports TensorFlow."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import agent
import links_tflite

ROOT = Path(__file__).resolve().parents[2]


def test_device_packages_import_without_tensorflow() -> None:
    modules = [
        f"{package.__name__}.{info.name}"
        for package in (agent, links_tflite)
        for info in pkgutil.iter_modules(package.__path__)
        if info.name != "__main__"
    ]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')]\n"
        "print(len(sys.modules)); sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(modules) >= 8


def test_the_guard_really_refuses_tensorflow() -> None:
    """The guard the integration tests run the agent under would catch an import."""
    code = (
        "import sys\n"
        "import tests.support.agent_without_tensorflow as guard\n"
        "sys.meta_path.insert(0, guard.RefuseTensorFlow())\n"
        "import keras\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode != 0
    assert "must not import TensorFlow" in result.stderr
