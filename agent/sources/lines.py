"""`lines`: one text record a line (a `str`, without its line end) from a file or a folder of
files; bounds and skipped lines: agent.sources.textfiles."""

from __future__ import annotations

from typing import ClassVar

from agent.sources.textfiles import TextRecordsSource


class LinesSource(TextRecordsSource):
    type: ClassVar[str] = "lines"

    def parse(self, text: str) -> str:
        return text
