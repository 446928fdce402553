"""The agent's state that a control action may change, as one typed snapshot: taken before
the change, put back whole where the change fails (all or nothing; agent.service)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agent.config import AgentConfig
from agent.costbook import CostSnapshot
from agent.models import ModelAdapter
from agent.selection import Selection
from links_tflite.bundle import Bundle
from links_tflite.ensemble import EnsemblePredictor


@dataclass(frozen=True)
class AgentState:
    config: AgentConfig
    bundle: Bundle
    ensembles: EnsemblePredictor
    models: Mapping[str, ModelAdapter]  # the adapters themselves: loaded ones stay loaded
    costs: CostSnapshot
    selection: Selection | None
