"""Fixtures of the agent's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import tests.support.python_models as pm


@pytest.fixture()
def models(digits_fixture) -> Iterator[None]:
    """The digits models behind Python entry points (tests.support.python_models), reading
    the committed fixture's TFLite files; reset after the test, a hung call let go."""
    pm.reset()
    pm.MODEL_DIR = digits_fixture.root / "models"
    yield
    pm.RELEASE.set()  # let any hung call return
    pm.reset()
