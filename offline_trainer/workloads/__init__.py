"""Workloads: an input stream, its ground truth and the black-box models that watch it.

Registered by name so that `mlink-train zoo --workload NAME` can find them.
"""

from __future__ import annotations

from offline_trainer.workloads.base import ModelRecipe, Workload, WorkloadData
from offline_trainer.workloads.city import CityWorkload
from offline_trainer.workloads.digits import DigitsWorkload

WORKLOADS: dict[str, type[Workload]] = {w.name: w for w in (DigitsWorkload, CityWorkload)}


def get_workload(name: str) -> Workload:
    try:
        return WORKLOADS[name]()
    except KeyError:
        known = ", ".join(sorted(WORKLOADS))
        raise ValueError(f"unknown workload {name!r}; known: {known}") from None


__all__ = ["WORKLOADS", "ModelRecipe", "Workload", "WorkloadData", "get_workload"]
