"""`[[sources]]`: several sources (cameras, feeds) in one agent, each read on its own thread
at its own pace, their frames handed to the loop in turn.

Source i's frames carry camera `offset_i + c` (its cameras follow the earlier sources' in
`cameras`) and frame id `source_frame_id * n + i`, unique across the sources as long as each
source's ids are. Each source keeps at most one frame waiting: a file or generated source
waits for the loop; a live one keeps its newest frame (its own `dropped` count says how many
the loop had no time for). A source that fails ends the stream with its error. The modalities
offered are those every source offers: each model reads its input on every camera's frames.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, ClassVar

from agent.sources.base import Frame, Source


class _Feed:
    def __init__(self, source: Source) -> None:
        self.source = source
        self.slot: Frame | None = None
        self.done = False
        self.error: BaseException | None = None


class ManySources(Source):
    type: ClassVar[str] = "sources"

    def __init__(self, sources: list[Source]) -> None:
        super().__init__(None)
        self.sources = sources
        # what every camera offers: a model reads its input on every frame, whatever camera
        self.modalities = tuple(sorted(set.intersection(*(set(s.modalities) for s in sources))))
        self._offsets = [sum(len(s.cameras) for s in sources[:i]) for i in range(len(sources))]
        self._cond = threading.Condition()
        self._stop = threading.Event()

    @property
    def cameras(self) -> tuple[str, ...]:
        return tuple(name for source in self.sources for name in source.cameras)

    def _pump(self, feed: _Feed) -> None:
        try:
            for frame in feed.source.frames():
                with self._cond:
                    while feed.slot is not None and not self._stop.is_set():
                        self._cond.wait(0.5)
                    if self._stop.is_set():
                        return
                    feed.slot = frame
                    self._cond.notify_all()
        except BaseException as exc:  # handed to the loop, which raises it
            feed.error = exc
        finally:
            with self._cond:
                feed.done = True
                self._cond.notify_all()

    def frames(self) -> Iterator[Frame]:
        feeds = [_Feed(s) for s in self.sources]
        for i, feed in enumerate(feeds):
            threading.Thread(target=self._pump, args=(feed,), daemon=True,
                             name=f"sources-{i}").start()
        n, turn = len(feeds), 0
        while True:
            with self._cond:
                taken: tuple[int, Frame] | None = None
                while taken is None:
                    for k in range(n):
                        i = (turn + k) % n
                        feed = feeds[i]
                        if feed.slot is not None:
                            taken, feed.slot, turn = (i, feed.slot), None, i + 1
                            break
                        if feed.error is not None:
                            raise feed.error
                    else:
                        if self._stop.is_set() or all(f.done for f in feeds):
                            return
                        self._cond.wait(0.5)
                self._cond.notify_all()
            i, frame = taken
            yield replace(frame, frame_id=frame.frame_id * n + i,
                          camera=self._offsets[i] + frame.camera)

    def stats(self) -> dict[str, dict[str, int]]:
        return {name: counts for s in self.sources for name, counts in s.stats().items()}

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for source in self.sources:
            source.close()


def open_many(sources: list[Any], open_one: Any) -> ManySources:
    """Each configured source opened in turn; one that fails closes the ones before it."""
    opened: list[Source] = []
    try:
        for config in sources:
            opened.append(open_one(config))
    except BaseException:
        for source in opened:
            source.close()
        raise
    return ManySources(opened)
