"""The cost book: every cost measured on this box, models keyed by id and links keyed by
(source, target), each a running `CostStats` (agent.costs). What selection reads and what
the status reports; a snapshot of it travels with the agent's state (agent.state)."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from agent.config import ProfilingConfig
from agent.costs import Cost, CostStats
from links_tflite.bundle import link_name

Pair = tuple[str, str]  # a link: (source, target)


@dataclass(frozen=True)
class CostSnapshot:
    """The book's figures at one moment (copies), to put back as they were."""

    models: Mapping[str, CostStats]
    links: Mapping[Pair, CostStats]


class CostBook:
    def __init__(self, settings: ProfilingConfig) -> None:
        self.settings = settings  # read when a figure is first kept (EMA, window, warm-up)
        self.models: dict[str, CostStats] = {}
        self.links: dict[Pair, CostStats] = {}

    def _new(self) -> CostStats:
        return CostStats(alpha=self.settings.ema_alpha, window=self.settings.delay_window,
                         warmup=self.settings.warmup_runs)

    def model(self, model_id: str) -> CostStats:
        """The model's running figures, kept from now on where there were none."""
        if model_id not in self.models:
            self.models[model_id] = self._new()
        return self.models[model_id]

    def link(self, source: str, target: str) -> CostStats:
        key = (source, target)
        if key not in self.links:
            self.links[key] = self._new()
        return self.links[key]

    def model_costs(self, model_ids: Iterable[str]) -> dict[str, Cost]:
        """Each model's cost; unmeasured figures are None."""
        return {m: self.models[m].cost() if m in self.models else Cost(None, None)
                for m in model_ids}

    def link_costs(self, pairs: Iterable[Pair]) -> dict[Pair, Cost]:
        """The measured links among `pairs`, in their order."""
        return {pair: self.links[pair].cost() for pair in pairs if pair in self.links}

    def set_model_costs(self, costs: Mapping[str, Cost]) -> None:
        """Replace the models' figures (`{}` forgets them before measuring again)."""
        self.models = {m: self._with_cost(self.models.get(m), c) for m, c in costs.items()}

    def set_link_costs(self, costs: Mapping[Pair, Cost]) -> None:
        self.links = {p: self._with_cost(self.links.get(p), c) for p, c in costs.items()}

    def _with_cost(self, stats: CostStats | None, cost: Cost) -> CostStats:
        stats = stats if stats is not None else self._new()
        stats.memory_mb = cost.memory_mb
        stats.set_delay(cost.delay_ms)
        return stats

    def keep_only(self, model_ids: Iterable[str]) -> None:
        """Forget the figures of models (and their links) no longer configured."""
        keep = set(model_ids)
        self.models = {m: s for m, s in self.models.items() if m in keep}
        self.links = {p: s for p, s in self.links.items() if p[0] in keep and p[1] in keep}

    def snapshot(self) -> CostSnapshot:
        return CostSnapshot(copy.deepcopy(self.models), copy.deepcopy(self.links))

    def restore(self, snapshot: CostSnapshot) -> None:
        self.models = copy.deepcopy(dict(snapshot.models))
        self.links = copy.deepcopy(dict(snapshot.links))

    def to_dict(self, model_ids: Iterable[str], pairs: Iterable[Pair]
                ) -> dict[str, dict[str, dict[str, float | int | None]]]:
        """The status's figures: every model's, and the measured links among `pairs`."""
        return {
            "models": {m: self.model(m).to_dict() for m in model_ids},
            "links": {link_name(s, t): self.links[(s, t)].to_dict()
                      for (s, t) in pairs if (s, t) in self.links},
        }
