"""A directory of image files, in name order: `.npy` arrays natively, PNG/JPEG/... through
Pillow (the `images` extra). Pixel values are scaled to [0, 1] unless `scale` says otherwise."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from agent.configbase import Identifier, Paced
from agent.sources.base import SOURCES, Frame, Source, paced

log = logging.getLogger(__name__)


def read_image(path: Path, size: tuple[int, int] | None, grayscale: bool) -> np.ndarray:
    """One image as float32 (H, W[, C]) with its raw pixel values."""
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False).astype(np.float32)
    try:
        from PIL import Image
    except ImportError:
        raise RuntimeError(f"{path}: reading image files needs Pillow: pip install pillow"
                           ) from None
    with Image.open(path) as image:
        image = image.convert("L" if grayscale else "RGB")
        if size is not None:
            image = image.resize((size[1], size[0]))
        return np.asarray(image, dtype=np.float32)


class ImagesSourceConfig(Paced):
    """A directory of image files (`.npy`, or PNG/JPEG/... with Pillow), in name order."""

    type: Literal["images"]
    path: Path
    pattern: str = "*"
    modality: Identifier = "image"
    size: tuple[int, int] | None = None
    grayscale: bool = False
    scale: float = Field(1.0 / 255.0, gt=0.0)


@SOURCES.register
class ImagesSource(Source):
    type: ClassVar[str] = "images"
    config_class = ImagesSourceConfig

    def __init__(self, config) -> None:
        super().__init__(config)
        self.files = sorted(p for p in Path(config.path).glob(config.pattern) if p.is_file())
        if not self.files:
            raise FileNotFoundError(f"{config.path}: no files match {config.pattern!r}")
        self.modalities = (config.modality,)

    def _frames(self) -> Iterator[Frame]:
        """Files that cannot be read as images are skipped (a warning each, once); a pass
        with none readable is an error naming the folder and the first file's problem."""
        size = tuple(self.config.size) if self.config.size else None
        skipped: dict[Path, str] = {}
        while True:
            read = 0
            for index, path in enumerate(self.files):
                try:
                    pixels = read_image(path, size, self.config.grayscale) * self.config.scale
                    ts = path.stat().st_mtime
                except (OSError, ValueError, SyntaxError) as exc:  # PIL and np.load's errors
                    if path not in skipped:
                        skipped[path] = f"{type(exc).__name__}: {exc}"
                        log.warning("%s: not a readable image, skipped (%s)", path, exc)
                    continue
                read += 1
                yield Frame(frame_id=index, ts=ts, modalities={self.config.modality: pixels})
            if read == 0:
                first = next(iter(skipped.items()), None)
                raise RuntimeError(f"{self.config.path}: none of the {len(self.files)} files "
                                   f"matching {self.config.pattern!r} is a readable image"
                                   + (f" ({first[0].name}: {first[1]})" if first else ""))
            if not self.config.loop:
                return

    def frames(self) -> Iterator[Frame]:
        return paced(self._frames(), self.config.fps)
