"""A directory of image files, in name order: `.npy` arrays natively, PNG/JPEG/... through
Pillow (the `images` extra). Pixel values are scaled to [0, 1] unless `scale` says otherwise."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from agent.configbase import Identifier, Paced
from agent.sources.base import SOURCES, Frame, Source, paced


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
        size = tuple(self.config.size) if self.config.size else None
        while True:
            for index, path in enumerate(self.files):
                pixels = read_image(path, size, self.config.grayscale) * self.config.scale
                yield Frame(frame_id=index, ts=path.stat().st_mtime,
                            modalities={self.config.modality: pixels})
            if not self.config.loop:
                return

    def frames(self) -> Iterator[Frame]:
        return paced(self._frames(), self.config.fps)
