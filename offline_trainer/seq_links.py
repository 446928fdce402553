"""Links with a sequence on either side: seq2vec, vec2seq and seq2seq.

- seq2vec: Embedding -> LSTM -> MLP -> task activation (the target's kind picks loss and
  activation, as for vec2vec). Padding is irrelevant rather than masked: the sequence length
  is fixed (max_len) and PAD has its own learned embedding, which is what lets the LSTM be
  unrolled and converted to int8.
- vec2seq: MLP encoder (source vector -> `slots` memory vectors and the initial LSTM state)
  -> LSTM decoder with (Luong, dot-product) attention over the memory.
- seq2seq: LSTM encoder (its per-position outputs are the memory, its final state the
  decoder's initial state) -> the same attention decoder.

Decoders are trained with teacher forcing on the target model's token ids (BOS = 1 first,
loss masked after the first PAD = 0, which the decoder must learn to emit) and exported as
an encoder file plus a ONE-STEP decoder file (token, h, c, memory -> logits, h, c); the
greedy loop runs on the host (`links_tflite.decoding`). All LSTMs are unrolled over a fixed
length, which int8 conversion needs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from links_tflite.decoding import BOS_TOKEN, greedy_decode
from links_tflite.tasks import TaskSpec, link_width

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeqSizes:
    embedding: int = 16
    units: int = 32
    slots: int = 4  # memory vectors a vec2seq encoder makes from one source vector


def source_encoder(source: TaskSpec, sizes: SeqSizes) -> Any:
    """Source output -> [memory (slots, units), h, c]: the part a decoder attends over."""
    import keras

    if source.kind == "sequence":
        inputs = keras.Input((source.max_len,), dtype="int32", name="source")
        embedded = keras.layers.Embedding(source.vocab_size, sizes.embedding)(inputs)
        memory, h, c = keras.layers.LSTM(sizes.units, return_sequences=True, return_state=True,
                                         unroll=True)(embedded)
    else:
        inputs = keras.Input((source.output_width,), name="source")
        hidden = keras.layers.Dense(sizes.units * 2, activation="relu")(inputs)
        memory = keras.layers.Dense(sizes.slots * sizes.units, activation="tanh")(hidden)
        memory = keras.layers.Reshape((sizes.slots, sizes.units))(memory)
        h = keras.layers.Dense(sizes.units, activation="tanh")(hidden)
        c = keras.layers.Dense(sizes.units)(hidden)
    return keras.Model(inputs, [memory, h, c], name="encoder")


def build_seq2vec(source: TaskSpec, target: TaskSpec, loss: Any, learning_rate: float,
                  sizes: SeqSizes, steps_per_execution: int = 1) -> Any:
    """Token ids -> the target's vector output (softmax/sigmoid/linear by its kind)."""
    import keras

    inputs = keras.Input((source.max_len,), dtype="int32", name="source")
    embedded = keras.layers.Embedding(source.vocab_size, sizes.embedding)(inputs)
    state = keras.layers.LSTM(sizes.units, unroll=True)(embedded)
    hidden = keras.layers.Dense(max(2 * link_width(target), sizes.units),
                                activation="relu")(state)
    logits = keras.layers.Dense(link_width(target), name="logits")(hidden)
    outputs = keras.layers.Activation(target.activation)(logits)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss,
                  steps_per_execution=steps_per_execution)
    return model


@dataclass
class Seq2SeqParts:
    """The trained pieces of a link into a sequence target."""

    trainer: Any  # teacher-forced training model
    encoder: Any  # source -> memory, h, c
    step: Any  # token, h, c, memory -> logits, h, c


def build_decoder(source: TaskSpec, target: TaskSpec, learning_rate: float,
                  sizes: SeqSizes, steps_per_execution: int = 1) -> Seq2SeqParts:
    """vec2seq or seq2seq (by the source's kind): encoder + attention LSTM decoder."""
    import keras

    encoder = source_encoder(source, sizes)
    embed = keras.layers.Embedding(target.vocab_size, sizes.embedding)
    lstm = keras.layers.LSTM(sizes.units, return_sequences=True, return_state=True, unroll=True)
    attend = keras.layers.Attention()
    join = keras.layers.Concatenate()
    project = keras.layers.Dense(target.vocab_size, name="logits")

    def decode(tokens: Any, h: Any, c: Any, memory: Any) -> tuple[Any, Any, Any]:
        outputs, h_out, c_out = lstm(embed(tokens), initial_state=[h, c])
        context = attend([outputs, memory])
        return project(join([outputs, context])), h_out, c_out

    source_in = keras.Input(encoder.input_shape[1:], dtype=encoder.inputs[0].dtype,
                            name="source")
    teacher = keras.Input((target.max_len,), dtype="int32", name="teacher")
    memory, h0, c0 = encoder(source_in)
    logits, _, _ = decode(teacher, h0, c0, memory)
    trainer = keras.Model([source_in, teacher], logits)
    trainer.compile(optimizer=keras.optimizers.Adam(learning_rate),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    steps_per_execution=steps_per_execution)

    token = keras.Input((1,), dtype="int32", name="token")
    h_in = keras.Input((sizes.units,), name="h")
    c_in = keras.Input((sizes.units,), name="c")
    memory_in = keras.Input(tuple(encoder.outputs[0].shape[1:]), name="memory")
    step_logits, h_out, c_out = decode(token, h_in, c_in, memory_in)
    step_logits = keras.layers.Reshape((target.vocab_size,))(step_logits)
    step = keras.Model([token, h_in, c_in, memory_in], [step_logits, h_out, c_out])
    return Seq2SeqParts(trainer=trainer, encoder=encoder, step=step)


def teacher_inputs(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decoder inputs (BOS, y_0 .. y_{T-2}) and the loss mask: positions up to and including
    the first PAD count (the decoder must learn to end), those after it do not."""
    tokens = np.rint(tokens).astype(np.int32)
    n, length = tokens.shape
    shifted = np.concatenate([np.full((n, 1), BOS_TOKEN, np.int32), tokens[:, :-1]], axis=1)
    is_pad = tokens == 0
    first_pad = np.where(is_pad.any(axis=1), is_pad.argmax(axis=1), length)
    mask = (np.arange(length)[None, :] <= first_pad[:, None]).astype(np.float32)
    return shifted, mask


def as_source(source: TaskSpec, x: np.ndarray) -> np.ndarray:
    """Recorded outputs as a link's input: token ids become int32."""
    return np.rint(x).astype(np.int32) if source.kind == "sequence" else x.astype(np.float32)


class KerasNamed:
    """A Keras model behind the MultiTensorRunner interface ({name: array} -> {output_i}),
    so the float reference decodes through the same greedy loop as the TFLite files.
    Optionally records every input batch (the decoder step's representative set)."""

    def __init__(self, model: Any, record: bool = False) -> None:
        self.model = model
        self.input_names = tuple(t.name.split(":")[0] for t in model.inputs)
        self.recorded: list[dict[str, np.ndarray]] = []
        self._record = record

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = [
            np.rint(inputs[n]).astype(np.int32) if "int" in str(t.dtype)
            else np.asarray(inputs[n], np.float32)
            for n, t in zip(self.input_names, self.model.inputs, strict=True)
        ]
        if self._record:
            self.recorded.append(dict(zip(self.input_names, feed, strict=True)))
        outputs = self.model(feed if len(feed) > 1 else feed[0], training=False)
        outputs = outputs if isinstance(outputs, list | tuple) else [outputs]
        return {f"output_{i}": np.asarray(o, dtype=np.float32) for i, o in enumerate(outputs)}


def keras_decode(parts: Seq2SeqParts, source: TaskSpec, target: TaskSpec, x: np.ndarray,
                 record: bool = False) -> tuple[np.ndarray, list[dict[str, np.ndarray]]]:
    """Greedy decoding with the float Keras parts; optionally the step inputs it saw."""
    step = KerasNamed(parts.step, record=record)
    tokens = greedy_decode(KerasNamed(parts.encoder), step,  # type: ignore[arg-type]
                           as_source(source, x).astype(np.float32), target.max_len)
    return tokens, step.recorded


def step_representative(recorded: list[dict[str, np.ndarray]], limit: int,
                        seed: int) -> list[np.ndarray]:
    """Up to `limit` single-step inputs (token, h, c, memory) drawn from a float decode."""
    names = ("token", "h", "c", "memory")
    stacked = [np.concatenate([batch[n] for batch in recorded]) for n in names]
    rows = np.random.default_rng(seed).permutation(stacked[0].shape[0])[:limit]
    return [a[rows] for a in stacked]
