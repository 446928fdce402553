"""`lines`: one text record a line (a `str`, without its line end) from a file or a folder of
files; bounds and skipped lines: agent.sources.textfiles."""

from __future__ import annotations

from typing import ClassVar, Literal

from agent.configbase import Identifier
from agent.sources.base import SOURCES
from agent.sources.textfiles import TextRecordsConfig, TextRecordsSource


class LinesSourceConfig(TextRecordsConfig):
    """One text record (a `str`) a line, as the modality `modality`."""

    type: Literal["lines"]
    modality: Identifier = "text"


@SOURCES.register
class LinesSource(TextRecordsSource):
    type: ClassVar[str] = "lines"
    config_class = LinesSourceConfig

    def parse(self, text: str) -> str:
        return text
