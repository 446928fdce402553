"""The zoo's model cards as one table (docs/zoo.md is generated with this)."""

from __future__ import annotations

import json
from pathlib import Path


def cards(zoo_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((zoo_dir / "models").glob("*.json"))]


def card_table(zoo_dir: Path) -> str:
    """Markdown: per model, task, size, measured cost and ground-truth agreement."""
    rows = [
        "| model | task | parameters | file KB | delay ms | memory MB | GT agreement | trivial |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for card in cards(zoo_dir):
        rows.append(
            f"| {card['model']} | {card['task']['kind']} | {card['parameters']:,} "
            f"| {card['file_bytes'] / 1024:.0f} | {card['delay_ms']:.4f} "
            f"| {card['memory_mb'] or 0:.2f} | {card['ground_truth_agreement']:.3f} "
            f"| {card['trivial_agreement']:.3f} |"
        )
    listed = cards(zoo_dir)
    delays = [c["delay_ms"] for c in listed]
    sizes = [c["file_bytes"] for c in listed]
    rows.append("")
    rows.append(f"Most / least expensive: {max(sizes) / min(sizes):.1f}x in file size, "
                f"{max(delays) / min(delays):.1f}x in delay.")
    return "\n".join(rows)
