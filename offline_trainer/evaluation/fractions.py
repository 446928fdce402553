"""Link agreement against the share of the recording the links are trained on (the paper's
1, 5, 10, 20, 48%). Training sets are nested (the first f x n rows of one seeded permutation,
the one `train_links.split_rows` uses), and every fraction is scored on the same held-out
rows: the recording's rows beyond the largest fraction, never trained on.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from links_tflite.bundle import link_name
from links_tflite.recording import Recording
from offline_trainer.links import LinkTraining
from offline_trainer.train_links import linkable_pairs, split_rows, train_one_link

log = logging.getLogger(__name__)


def nested_rows(n: int, fraction: float, largest: float, seed: int) -> tuple[np.ndarray,
                                                                           np.ndarray]:
    """Training rows for `fraction` and the held-out rows shared by every fraction: both cut
    from the one seeded permutation `split_rows` draws, so the training sets are nested."""
    return split_rows(n, fraction, seed)[0], split_rows(n, largest, seed)[1]


def train_fraction(recording: Recording, fraction: float, largest: float,
                   training: LinkTraining, scratch: Path) -> dict[str, float]:
    """Every pairwise link trained on `fraction` of the rows: link name -> held-out agreement
    of the exported (int8 where it converts) file."""
    train, held_out = nested_rows(len(recording), fraction, largest, training.seed)
    agreements = {}
    for source, target in tqdm(linkable_pairs(recording), desc=f"links at {fraction:.0%}",
                               unit="link"):
        result = train_one_link(recording, source, target, train, held_out, scratch, training)
        agreements[link_name(source, target)] = result.agreement
    return agreements


def fraction_table(recording: Recording, fractions: tuple[float, ...], training: LinkTraining,
                   cache: Path, stamp: dict[str, object],
                   largest_agreements: dict[str, float]) -> dict[float, dict[str, float]]:
    """fraction -> link -> agreement. The largest fraction's figures are the bundle's own
    links (same split, same seed); the others are trained here and cached under `cache`
    with the stamp of what they were trained from."""
    largest = max(fractions)
    cached = json.loads(cache.read_text()) if cache.is_file() else {}
    table = cached.get("table", {}) if cached.get("stamp") == stamp else {}
    result: dict[float, dict[str, float]] = {largest: dict(largest_agreements)}
    for fraction in sorted(f for f in fractions if f < largest):
        key = f"{fraction:.4f}"
        if key not in table:
            scratch = Path(tempfile.mkdtemp(prefix=".fraction-", dir=cache.parent))
            try:
                table[key] = train_fraction(recording, fraction, largest, training, scratch)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            cache.write_text(json.dumps({"stamp": stamp, "table": table}, indent=2) + "\n")
        result[fraction] = table[key]
    return dict(sorted(result.items()))
