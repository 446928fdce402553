"""Python entry-point models (`adapter = "python"`) over text lines and JSON records, for the
`lines` and `jsonl` sources' end-to-end tests: plain functions of one record, whose outputs
are related (shouting reviews are angry; big orders go express more often), so that links
between them have something to learn."""

from __future__ import annotations

from typing import Any

import numpy as np


def _one_hot(flag: bool) -> np.ndarray:
    return np.asarray([0.0, 1.0] if flag else [1.0, 0.0], dtype=np.float32)


def shouting(text: str) -> np.ndarray:
    """single_label (calm, shouting): most letters upper case."""
    letters = [c for c in text if c.isalpha()]
    return _one_hot(bool(letters) and sum(c.isupper() for c in letters) > 0.6 * len(letters))


def exclaims(text: str) -> np.ndarray:
    """single_label (no, yes): ends with an exclamation mark."""
    return _one_hot(text.rstrip().endswith("!"))


def words(text: str) -> np.ndarray:
    """regression: number of words / 10."""
    return np.asarray([len(text.split()) / 10.0], dtype=np.float32)


def bulk(record: dict[str, Any]) -> np.ndarray:
    """single_label (small, bulk): 10 items or more."""
    return _one_hot(int(record["qty"]) >= 10)


def express(record: dict[str, Any]) -> np.ndarray:
    """single_label (standard, express)."""
    return _one_hot(bool(record["express"]))


# memory each class-based model holds, so that a budget can leave one out: above glibc's mmap
# ceiling (32 MiB), so it is mapped on load and unmapped on unload, and measured each time
BALLAST_MB = 40.0


class _Ballasted:
    """A class entry (an instance per load) holding `BALLAST_MB` of memory."""

    function = staticmethod(words)

    def __init__(self) -> None:
        self.ballast = np.ones(int(BALLAST_MB * 1024 * 1024 / 8))

    def __call__(self, record: Any) -> np.ndarray:
        return self.function(record)


class Shouting(_Ballasted):
    function = staticmethod(shouting)


class Express(_Ballasted):
    function = staticmethod(express)
