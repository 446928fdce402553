"""Workloads: an input stream, its ground truth and the black-box models that watch it.

One file per workload in this package, registered by name (WORKLOADS, agent.registry) so
that `mlink-train zoo --workload NAME` finds it.
"""

from __future__ import annotations

from offline_trainer.workloads.base import WORKLOADS, ModelRecipe, Workload, WorkloadData


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
