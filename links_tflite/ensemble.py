"""Ensemble inference: predict a target model's output from the activated models' outputs.

h_{A,j} combines the links g_ij from the sources i in the activated set A. The skeleton's
ensemble is the agreement-weighted mean of the link outputs, with the weights (the profiled
pairwise agreements) renormalised over the sources present, so one ensemble per target
serves any subset A. Which links are loaded follows the activated set.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from links_tflite.bundle import Bundle, LinkEntry
from links_tflite.interpreter import TFLiteRunner
from links_tflite.tasks import activate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    value: np.ndarray
    sources: tuple[str, ...]
    est_agreement: float


def combine(outputs: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """Weighted mean of link outputs; equal weights where every weight is zero."""
    w = np.asarray(weights, dtype=np.float64)
    w = np.full_like(w, 1.0 / len(w)) if w.sum() <= 0 else w / w.sum()
    stacked = np.stack([np.asarray(o, dtype=np.float64) for o in outputs])
    return np.tensordot(w, stacked, axes=1).astype(np.float32)


class EnsemblePredictor:
    """Holds the link interpreters needed for one activated set and runs the ensembles."""

    def __init__(self, bundle: Bundle, num_threads: int = 1) -> None:
        self.bundle = bundle
        self.num_threads = num_threads
        self._runners: dict[str, TFLiteRunner] = {}
        self._active: frozenset[str] = frozenset()

    def needed_links(self, active: Iterable[str], targets: Iterable[str]) -> list[LinkEntry]:
        active_set = set(active)
        return [
            link
            for target in targets
            for link in self.bundle.links_into(target)
            if link.source in active_set
        ]

    def prepare(self, active: Iterable[str], targets: Iterable[str]) -> None:
        """Load exactly the links from the activated sources into the predicted targets."""
        self._active = frozenset(active)
        wanted = {link.name: link for link in self.needed_links(self._active, targets)}
        for name in list(self._runners):
            if name not in wanted:
                del self._runners[name]
        for name, link in wanted.items():
            if name not in self._runners:
                self._runners[name] = TFLiteRunner(self.bundle.path_of(link), self.num_threads)
        log.debug("ensemble links loaded: %s", sorted(self._runners))

    def runner(self, link: LinkEntry) -> TFLiteRunner:
        return self._runners[link.name]

    def predict(self, target: str, outputs: Mapping[str, np.ndarray]) -> Prediction:
        """Predict `target` from the outputs of whichever activated sources are present."""
        links = [
            link
            for link in self.bundle.links_into(target)
            if link.source in outputs and link.name in self._runners
        ]
        if not links:
            raise LookupError(f"no loaded link predicts {target!r} from {sorted(outputs)}")
        profile = self.bundle.profile
        activation = self.bundle.models[target].activation
        link_outputs = [
            activate(activation, self._runners[link.name].run_one(outputs[link.source]))
            for link in links
        ]
        weights = [profile.link_agreement(link.source, target) for link in links]
        sources = tuple(link.source for link in links)
        return Prediction(
            value=combine(link_outputs, weights),
            sources=sources,
            est_agreement=profile.ensemble_agreement(target, frozenset(sources)),
        )
