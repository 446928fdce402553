"""What remote control (agent.control) may do to the running agent: the narrow interface it
depends on, implemented by agent.service.Service (and by the tests' fakes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from agent.config import AgentConfig
from agent.sdnotify import Notifier
from links_tflite.bundle import Bundle


class Controlled(Protocol):
    config_version: int  # the version of the config in force, reported in the status
    notifier: Notifier

    @property
    def config(self) -> AgentConfig: ...

    @property
    def bundle_root(self) -> Path: ...

    def wait_ready(self, timeout_s: float) -> bool:
        """True once the first frame is processed (requests wait for it)."""
        ...

    def reconfigure(self, new: AgentConfig) -> None:
        """Apply a validated config, all or nothing; RequestError names what failed."""
        ...

    def remeasure(self) -> dict[str, Any]:
        """Measure every model and link again now, and select again (`cmd/reprofile`)."""
        ...

    def reselect(self) -> dict[str, Any]: ...

    def swap_bundle(self, bundle: Bundle) -> dict[str, Any]:
        """Use a verified bundle, all or nothing; the new selection."""
        ...

    def upload(self, reason: str) -> dict[str, Any]:
        """Upload the profiling windows' rows (`cmd/upload`, agent.uploads): the upload's id,
        rows, chunks, size and sha256; RequestError where it cannot (nothing published)."""
        ...

    def publish_status(self, state: str) -> None: ...
