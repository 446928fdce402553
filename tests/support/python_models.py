"""Python entry-point models for the agent's tests (`adapter = "python"`): each wraps one of
the digits or city zoo's real TFLite files and can be made to misbehave, or to drift, on
demand.

Module state is set by the tests in the same process: `MODEL_DIR` (where the .tflite files
are), `MODE[model_id]` in {ok, raise, exit, interrupt, hang, nan, shape}, `DRIFT[model_id]`
(flip the output's classes), and `BALLAST_MB` (memory each instance holds, so that its cost
is known).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from links_tflite.interpreter import TFLiteRunner

MODEL_DIR: Path | None = None
MODE: dict[str, str] = {}
DRIFT: dict[str, bool] = {}
BALLAST_MB: float = 0.0
RELEASE = threading.Event()  # set to let hung calls return
CALLS: dict[str, int] = {}


class Wrapped:
    model_id = ""

    def __init__(self) -> None:
        assert MODEL_DIR is not None, "set tests.support.python_models.MODEL_DIR first"
        self.runner = TFLiteRunner(MODEL_DIR / f"{self.model_id}.tflite")
        self.ballast = np.ones(int(BALLAST_MB * 1024 * 1024 / 8)) if BALLAST_MB else None

    def __call__(self, example: np.ndarray) -> np.ndarray:
        CALLS[self.model_id] = CALLS.get(self.model_id, 0) + 1
        mode = MODE.get(self.model_id, "ok")
        if mode == "raise":
            raise RuntimeError(f"{self.model_id} is broken")
        if mode == "exit":
            raise SystemExit(3)  # what sys.exit(3) does
        if mode == "interrupt":
            raise KeyboardInterrupt
        if mode == "hang":
            RELEASE.wait()
        output = self.runner.run_one(example)
        if mode == "nan":
            return np.full_like(output, np.nan)
        if mode == "shape":
            return np.concatenate([output, output])
        if DRIFT.get(self.model_id):
            return output[::-1].copy()
        return output


class Digit(Wrapped):
    model_id = "digit"


class Parity(Wrapped):
    model_id = "parity"


class Inkbox(Wrapped):
    model_id = "inkbox"


class Persons(Wrapped):
    model_id = "persons"


class Traffic(Wrapped):
    model_id = "traffic"


class Vehicles(Wrapped):
    model_id = "vehicles"


def reset() -> None:
    MODE.clear()
    DRIFT.clear()
    CALLS.clear()
    RELEASE.clear()
