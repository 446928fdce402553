"""Build the committed fixture the scheduler's tests run on without TensorFlow:
`tests/data/digits3/` holds three digits models (`digit`, `parity`, `inkbox`: a class, a
binary label, a box) as .tflite files, a bundle of the six int8 links between them with its
held-out profile, and the first frames of their stream. It is made the way the tests'
`digits_build` fixture makes its own (the digits zoo, links trained for 60 epochs), so it is
real TensorFlow -> TFLite output; rebuild it (needs the `trainer` extra) when the bundle
format or the digits workload changes:

    PYTHONPATH=. .venv/bin/python -m devtools.fixture_bundle tests/data/digits3
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np

MODELS = ("digit", "parity", "inkbox")
STREAM_FRAMES = 60


def build(out: Path, stream_frames: int = STREAM_FRAMES) -> Path:
    from links_tflite.recording import Recording
    from offline_trainer.links import LinkTraining
    from offline_trainer.train_links import train_bundle
    from offline_trainer.zoo import build_zoo

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_zoo("digits", root, seed=0)
        Recording.load(root / "recording.npz").select_models(MODELS).save(
            root / "recording-linked.npz")
        train_bundle(root / "recording-linked.npz", root / "bundle", 0.7,
                     LinkTraining(epochs=60))
        if out.exists():
            shutil.rmtree(out)
        (out / "models").mkdir(parents=True)
        shutil.copytree(root / "bundle", out / "bundle")
        for model_id in MODELS:
            shutil.copy2(root / "models" / f"{model_id}.tflite", out / "models")
        stream = Recording.load(root / "stream.npz").select_models(MODELS)
        stream.subset(np.arange(min(stream_frames, len(stream)))).save(out / "stream.npz")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--stream-frames", type=int, default=STREAM_FRAMES)
    args = parser.parse_args()
    print(build(args.out, args.stream_frames))


if __name__ == "__main__":
    main()
