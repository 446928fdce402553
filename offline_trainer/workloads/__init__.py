"""Workloads: an input stream, its ground truth and the black-box models that watch it.

Registered by name so that `mlink-train zoo --workload NAME` can find them.
"""

from __future__ import annotations

from offline_trainer.workloads.base import ModelRecipe, Workload, WorkloadData
from offline_trainer.workloads.city import CityWorkload
from offline_trainer.workloads.digits import DigitsWorkload

WORKLOADS: dict[str, type[Workload]] = {w.name: w for w in (DigitsWorkload, CityWorkload)}


def get_workload(name: str, **options: object) -> Workload:
    """The named workload; `options` are its constructor's (e.g. city's `model_size`)."""
    if name not in WORKLOADS:
        known = ", ".join(sorted(WORKLOADS))
        raise ValueError(f"unknown workload {name!r}; known: {known}")
    try:
        return WORKLOADS[name](**options)
    except TypeError as exc:
        raise ValueError(f"workload {name!r} does not take {sorted(options)}: {exc}") from None


__all__ = ["WORKLOADS", "ModelRecipe", "Workload", "WorkloadData", "get_workload"]
