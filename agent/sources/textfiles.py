"""What the `lines` and `jsonl` sources share: one record a line from a file or from the files
of a folder (name order), read in bounded pieces.

A line longer than `max_line_bytes` is skipped without being held in memory, as is one that is
not UTF-8; a line the source cannot parse (`jsonl`: not a JSON object) is skipped too. Each is
counted in the source's stats (hence in the agent's status) and logged with its file and line
number (the first `LOGGED` of each kind, the rest at debug level). Blank lines are not records.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from agent.configbase import Paced
from agent.sources.base import Frame, Source, paced

log = logging.getLogger(__name__)

LOGGED = 10
CHUNK = 64 * 1024


class TextRecordsConfig(Paced):
    """What the `lines` and `jsonl` sources' configs share: a file, or a folder's files
    matching `pattern` in name order; one record a line, a line longer than `max_line_bytes`
    skipped and counted."""

    path: Path
    pattern: str = Field("*", max_length=256)
    max_line_bytes: int = Field(65_536, ge=16, le=16 * 1024 * 1024)


class SkipRecord(ValueError):
    """A line that is not a record; the message says why."""


@dataclass
class TextCounters:
    records: int = 0
    too_long: int = 0
    not_utf8: int = 0
    malformed: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(vars(self))


def text_files(path: Path, pattern: str) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.glob(pattern) if p.is_file())
        if not files:
            raise FileNotFoundError(f"{path}: no files match {pattern!r}")
        return files
    raise FileNotFoundError(f"{path}: no such file or folder")


class TextRecordsSource(Source):
    """Yields one frame a record; subclasses say how a line becomes a record (`parse`)."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.files = text_files(Path(config.path), config.pattern)
        self.modalities = (config.modality,)
        self.counters = TextCounters()

    def parse(self, text: str) -> Any:
        raise NotImplementedError

    def _skip(self, kind: str, where: str, why: str) -> None:
        count = getattr(self.counters, kind) + 1
        setattr(self.counters, kind, count)
        log.log(logging.WARNING if count <= LOGGED else logging.DEBUG,
                "%s: %s, skipped (%s #%d)", where, why, kind, count)

    def _lines(self, path: Path) -> Iterator[tuple[str, str]]:
        """(where, text) of every line of a file that is short enough and UTF-8."""
        limit = self.config.max_line_bytes
        with path.open("rb") as file:
            for number in itertools.count(1):
                raw = file.readline(limit + 1)
                if not raw:
                    return
                where = f"{path}:{number}"
                if len(raw) > limit and not raw.endswith(b"\n"):
                    while raw and not raw.endswith(b"\n"):
                        raw = file.readline(CHUNK)
                    self._skip("too_long", where, f"longer than {limit} bytes")
                    continue
                try:
                    text = raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError as exc:
                    self._skip("not_utf8", where, f"not UTF-8 ({exc.reason})")
                    continue
                if text.strip():
                    yield where, text

    def _frames(self) -> Iterator[Frame]:
        frame_id = 0
        while True:
            for path in self.files:
                for where, text in self._lines(path):
                    try:
                        record = self.parse(text)
                    except SkipRecord as exc:
                        self._skip("malformed", where, str(exc))
                        continue
                    self.counters.records += 1
                    yield Frame(frame_id=frame_id, ts=time.time(),
                                modalities={self.config.modality: record})
                    frame_id += 1
            if not self.config.loop or frame_id == 0:
                return

    def frames(self) -> Iterator[Frame]:
        return paced(self._frames(), self.config.fps)

    def stats(self) -> dict[str, dict[str, int]]:
        return {self.cameras[0]: self.counters.to_dict()}
