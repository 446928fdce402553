"""`jsonl`: one JSON object a line (a `dict`) from a file or a folder of files. A line that is
not a JSON object (bad syntax, an array or a number, NaN or Infinity, nesting deeper than
Python's parser takes) is counted as `malformed` and skipped, with its file and line number
in the log; bounds: agent.sources.textfiles."""

from __future__ import annotations

import json
from typing import Any, ClassVar, Literal

from agent.configbase import Identifier
from agent.sources.base import SOURCES
from agent.sources.textfiles import SkipRecord, TextRecordsConfig, TextRecordsSource


class JsonlSourceConfig(TextRecordsConfig):
    """One JSON object (a `dict`) a line, as the modality `modality`; a malformed line is
    counted and skipped."""

    type: Literal["jsonl"]
    modality: Identifier = "record"


def _no_constant(name: str) -> Any:
    raise SkipRecord(f"{name} is not a JSON number")


@SOURCES.register
class JsonlSource(TextRecordsSource):
    type: ClassVar[str] = "jsonl"
    config_class = JsonlSourceConfig

    def parse(self, text: str) -> dict[str, Any]:
        try:
            record = json.loads(text, parse_constant=_no_constant)
        except json.JSONDecodeError as exc:
            raise SkipRecord(f"not JSON ({exc.msg} at column {exc.colno})") from None
        except RecursionError:
            raise SkipRecord("JSON nested too deeply") from None
        if not isinstance(record, dict):
            raise SkipRecord(f"a JSON {type(record).__name__}, not an object")
        return record
