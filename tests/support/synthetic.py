"""Small synthetic recordings with sequence models, for testing links without a zoo.

Each frame has a hidden digit class d; the models see it differently:
- `digit` (single_label, 10): a noisy soft one-hot of d;
- `parity` (single_label, 2): d % 2;
- `spelled` (sequence): the letters of d's English name ("seven" -> s e v e n), as token ids;
- `reversed` (sequence): the same letters reversed;
- `noise` (single_label, 3): drawn independently of d (60% class 0): nothing predicts it
  better than its prior.
The vocabulary is PAD (0), BOS (1), then the letters; TaskSpec.labels holds it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from links_tflite.recording import Recording
from links_tflite.tasks import TaskSpec

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
LETTERS = sorted(set("".join(NAMES)))
VOCAB = ("<pad>", "<bos>", *LETTERS)
MAX_LEN = 6  # the longest name has 5 letters: one position left for the end


def spell(word: str) -> np.ndarray:
    ids = [VOCAB.index(ch) for ch in word]
    return np.asarray(ids + [0] * (MAX_LEN - len(ids)), dtype=np.float32)


def sequence_task() -> TaskSpec:
    return TaskSpec("sequence", dim=0, vocab_size=len(VOCAB), max_len=MAX_LEN, labels=VOCAB)


def make_recording(n: int = 240, seed: int = 0,
                   models: tuple[str, ...] = ("digit", "parity", "spelled")) -> Recording:
    rng = np.random.default_rng(seed)
    digits = rng.integers(0, 10, n)
    soft = np.eye(10, dtype=np.float32)[digits] * 0.8 + rng.dirichlet(np.ones(10), n) * 0.2
    all_outputs = {
        "digit": soft.astype(np.float32),
        "parity": np.eye(2, dtype=np.float32)[digits % 2],
        "spelled": np.stack([spell(NAMES[d]) for d in digits]),
        "reversed": np.stack([spell(NAMES[d][::-1]) for d in digits]),
        "noise": np.eye(3, dtype=np.float32)[rng.choice(3, n, p=[0.6, 0.2, 0.2])],
    }
    all_tasks = {
        "digit": TaskSpec("single_label", 10),
        "parity": TaskSpec("single_label", 2),
        "spelled": sequence_task(),
        "reversed": sequence_task(),
        "noise": TaskSpec("single_label", 3),
    }
    return Recording(
        workload="synthetic-spelling",
        frame_ids=np.arange(n, dtype=np.int64),
        ts=np.arange(n, dtype=np.float64),
        tasks={m: all_tasks[m] for m in models},
        outputs={m: all_outputs[m] for m in models},
    )


def save_recording(path: Path, **kwargs: object) -> Path:
    return make_recording(**kwargs).save(path)  # type: ignore[arg-type]


LARGE_VOCAB, SCENES = 2000, 25


def large_vocabulary_recording(n: int = 600, seed: int = 0) -> Recording:
    """`scene` (single_label) picks a caption template (the token 2, then three words of the
    first thousand ids); 30% of captions have their last word replaced by one of a thousand
    rare ids, which makes the vocabulary large. `keywords` (sequence, same ids) holds the
    caption's words, largest id first: a source whose tokens a link can copy."""
    rng = np.random.default_rng(seed)
    scene = rng.integers(0, SCENES, n)
    soft = np.eye(SCENES)[scene] * 0.8 + rng.dirichlet(np.ones(SCENES), n) * 0.2
    words = rng.choice(np.arange(3, 1000), (SCENES, 3), replace=False)
    caption = np.zeros((n, 8), np.float32)
    keywords = np.zeros((n, 8), np.float32)
    for i, c in enumerate(scene):
        row = [2, *words[c]]
        if rng.random() < 0.3:
            row[3] = int(rng.integers(1000, LARGE_VOCAB))
        caption[i, :4] = row
        keywords[i, :3] = sorted(row[1:], reverse=True)
    sequence = TaskSpec("sequence", dim=0, vocab_size=LARGE_VOCAB, max_len=8)
    return Recording(
        workload="synthetic-large-vocabulary", frame_ids=np.arange(n, dtype=np.int64),
        ts=np.arange(n, dtype=np.float64),
        tasks={"scene": TaskSpec("single_label", SCENES), "caption": sequence,
               "keywords": sequence},
        outputs={"scene": soft.astype(np.float32), "caption": caption, "keywords": keywords})
