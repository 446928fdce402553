"""Link builders and training: g_ij maps model i's output to model j's output.

The architecture follows the (source, target) output formats: vec2vec is the paper's
Dense(2*out) -> Dropout -> ReLU -> Dense(out, task activation), trained with RMSprop on the
target model's own (soft) outputs (in numpy, `offline_trainer.mlp`: Keras's per-model graph
tracing costs more than the whole fit); seq2vec, vec2seq and seq2seq are in `seq_links`.
`train_link` picks and trains one; what it returns says which Keras models to export.

The task activation is the model's last layer, but what is exported is the model up to the
logits (`logits_model`): an int8 softmax output has a resolution of 1/256 and turns the
near-ties of weak links into exact ties, so the host applies the activation in float
(`links_tflite.tasks.activate`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from links_tflite.bag import BagDecoding
from links_tflite.tasks import TaskSpec, gate_box, link_width
from offline_trainer.mlp import train_mlp
from offline_trainer.seq_links import (
    SeqSizes,
    as_source,
    build_decoder,
    build_seq2vec,
    keras_decode,
    step_representative,
    teacher_inputs,
)
from offline_trainer.workloads.builders import presence_box_loss, presence_box_targets

# Loss per target task kind: soft-label cross-entropy for labels, absolute error for numbers,
# and for a box, whether there is one (cross-entropy) and where (squared error, if there is).
# Numbers are scored `within_tolerance`: the absolute error fits the conditional median,
# which lands where most frames are; the squared error fits the conditional mean, which a
# heavy tail (city's person counts) drags away from them, the more so the better it is fit
# (more data: worse agreement, benchmarks/results/evaluation-city.md before this change).
LOSS: dict[str, Any] = {
    "single_label": "categorical_crossentropy",
    "multi_label": "binary_crossentropy",
    "localization": presence_box_loss,
    "regression": "mae",
}


@dataclass(frozen=True)
class LinkTraining:
    epochs: int = 120
    batch_size: int = 32
    learning_rate: float = 3e-3
    dropout: float = 0.1
    seed: int = 0
    seq_learning_rate: float = 1e-2
    sizes: SeqSizes = field(default_factory=SeqSizes)
    representative_rows: int = 300
    # Early stopping: training stops once the loss on the calibration frames (training frames
    # the link does not fit) has not improved for `patience` epochs; the best epoch's weights
    # are kept. `epochs` stays the cap.
    patience: int = 8
    min_delta: float = 1e-3  # a smaller drop of the calibration loss is no improvement
    # Keras's per-epoch and per-step overhead dominates links this small: each Keras epoch
    # runs `passes_per_epoch` shuffled passes over the rows, `steps_per_execution` batches
    # per call into the graph; `epochs` and `patience` still count passes.
    passes_per_epoch: int = 4
    steps_per_execution: int = 32


def architecture(source: TaskSpec, target: TaskSpec) -> str:
    """vec2vec, seq2vec, vec2seq or seq2seq, by the two models' output formats."""
    side = {True: "seq", False: "vec"}
    return f"{side[source.kind == 'sequence']}2{side[target.kind == 'sequence']}"


def build_vec2vec(source: TaskSpec, target: TaskSpec, training: LinkTraining) -> Any:
    import keras

    if target.kind not in LOSS:
        raise NotImplementedError(f"vec2vec cannot predict a {target.kind} target")
    keras.utils.set_random_seed(training.seed)
    inputs = keras.Input((source.output_width,))
    hidden = keras.layers.Dense(2 * link_width(target))(inputs)
    hidden = keras.layers.Dropout(training.dropout)(hidden)
    hidden = keras.layers.ReLU()(hidden)
    logits = keras.layers.Dense(link_width(target), name="logits")(hidden)
    outputs = keras.layers.Activation(target.activation)(logits)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.RMSprop(training.learning_rate),
                  loss=LOSS[target.kind], steps_per_execution=training.steps_per_execution)
    return model


def training_targets(target: TaskSpec, y: np.ndarray) -> np.ndarray:
    """What a link learns: the target model's outputs, with a box's presence in front."""
    if target.kind == "localization":
        return presence_box_targets(y)
    return y.astype(np.float32)


def activated(target: TaskSpec, model: Any, batch: Any) -> np.ndarray:
    """The float Keras link's output as the target model's (a localization link's gated)."""
    values = np.asarray(model(batch, training=False))
    return gate_box(values) if target.kind == "localization" else values


Validation = tuple[Any, np.ndarray] | None


def _repeated(value: Any, times: int) -> Any:
    if value is None or times == 1:
        return value
    if isinstance(value, list | tuple):
        return [np.concatenate([v] * times) for v in value]
    return np.concatenate([value] * times)


def fit_rows(model: Any, x: Any, y: np.ndarray, training: LinkTraining, validation: Any = None,
             sample_weight: np.ndarray | None = None) -> None:
    """`model.fit` for `training.epochs` passes over the rows, `passes_per_epoch` passes per
    Keras epoch; with `validation` (a Keras validation_data tuple) it stops once the
    validation loss has not improved for `patience` passes and keeps the best weights."""
    import keras

    passes = max(1, min(training.passes_per_epoch, training.epochs))
    callbacks = []
    if validation is not None and training.patience > 0:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=max(1, -(-training.patience // passes)),
            min_delta=training.min_delta, restore_best_weights=True))
    model.fit(_repeated(x, passes), _repeated(y, passes),
              sample_weight=_repeated(sample_weight, passes),
              epochs=max(1, -(-training.epochs // passes)), batch_size=training.batch_size,
              verbose=0, shuffle=True, validation_data=validation, callbacks=callbacks)


def standardisation(target: TaskSpec, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) a link learns its targets in: regression outputs (counts, masses: any
    scale) are standardised, everything else is learnt as it is."""
    if target.kind == "regression":
        return y.mean(axis=0), y.std(axis=0) + 1e-6
    return np.zeros(y.shape[1], np.float32), np.ones(y.shape[1], np.float32)


def fold_scale(model: Any, mean: np.ndarray, std: np.ndarray) -> None:
    """Fold a regression link's standardisation back into its logits layer, so that the
    exported file outputs the model's own units."""
    logits = model.get_layer("logits")
    kernel, bias = logits.get_weights()
    logits.set_weights([kernel * std[None, :], bias * std + mean])


def fit_link(model: Any, target: TaskSpec, x: Any, y: np.ndarray, training: LinkTraining,
             validation: Validation = None) -> None:
    """Fit a vector-target link with Keras, stopping early on `validation` (inputs, target
    outputs) where given; a regression link learns standardised outputs (`standardisation`)."""
    y = training_targets(target, y)
    mean, std = standardisation(target, y)
    checked = None
    if validation is not None and len(validation[1]):
        checked = (validation[0], (training_targets(target, validation[1]) - mean) / std)
    fit_rows(model, x, (y - mean) / std, training, checked)
    if target.kind == "regression":
        fold_scale(model, mean, std)


def fit_vec2vec(model: Any, target: TaskSpec, x: np.ndarray, y: np.ndarray,
                training: LinkTraining, validation: Validation = None) -> None:
    """Fit a vec2vec link in numpy (`offline_trainer.mlp`) and set its weights into `model`
    (`build_vec2vec`): the same network, loss, optimizer and early stopping as a Keras fit,
    without tracing Keras's graphs for every link."""
    y = training_targets(target, y)
    mean, std = standardisation(target, y)
    checked = None
    if validation is not None and len(validation[1]):
        checked = (np.asarray(validation[0], np.float32),
                   (training_targets(target, validation[1]) - mean) / std)
    trained = train_mlp(target.kind, np.asarray(x, np.float32), (y - mean) / std,
                        2 * link_width(target), epochs=training.epochs,
                        batch_size=training.batch_size, learning_rate=training.learning_rate,
                        dropout=training.dropout, seed=training.seed, validation=checked,
                        patience=training.patience, min_delta=training.min_delta,
                        check_every=max(1, min(training.passes_per_epoch, training.epochs)))
    model.set_weights(trained.weights())
    if target.kind == "regression":
        fold_scale(model, mean, std)


def train_vec2vec(source: TaskSpec, target: TaskSpec, x: np.ndarray, y: np.ndarray,
                  training: LinkTraining, validation: Validation = None) -> Any:
    model = build_vec2vec(source, target, training)
    checked = None if validation is None else (validation[0].astype(np.float32), validation[1])
    fit_vec2vec(model, target, x.astype(np.float32), y, training, checked)
    return model


def logits_model(model: Any) -> Any:
    """The trained link without its final activation: what is exported to TFLite."""
    import keras

    return keras.Model(model.inputs, model.get_layer("logits").output)


@dataclass
class ExportPart:
    """One Keras model to convert, with its representative inputs (one array per input)."""

    role: str  # "link" (vector target), "encoder" or "decoder" (sequence target)
    model: Any
    representative: list[np.ndarray]


@dataclass
class TrainedLink:
    """A trained link: what to convert, and its float self to check the files against."""

    architecture: str
    parts: list[ExportPart]
    predict: Callable[[np.ndarray], np.ndarray]  # float Keras link: activated output or ids
    check_inputs: np.ndarray  # recorded source rows to compare the files with `predict` on
    bag: BagDecoding | None = None  # a bag link's read-out (`offline_trainer.bag_links`)


def train_link(source: TaskSpec, target: TaskSpec, x: np.ndarray, y: np.ndarray,
               training: LinkTraining, validation: Validation = None) -> TrainedLink:
    """Train g: source output -> target output on aligned rows (x, y) of a recording,
    stopping early on `validation` (source, target outputs of other rows) where given."""
    import keras

    kind = architecture(source, target)
    keras.utils.set_random_seed(training.seed)
    rows = np.random.default_rng(training.seed).permutation(len(x))[: training.representative_rows]
    if validation is not None and len(validation[0]) == 0:
        validation = None
    if kind == "vec2vec":
        model = train_vec2vec(source, target, x, y, training, validation)
        return TrainedLink(kind, [ExportPart("link", logits_model(model), [x[rows]])],
                           lambda batch: activated(target, model, batch.astype(np.float32)),
                           x[rows])
    inputs = as_source(source, x)
    if kind == "seq2vec":
        if target.kind not in LOSS:
            raise NotImplementedError(f"seq2vec cannot predict a {target.kind} target")
        model = build_seq2vec(source, target, LOSS[target.kind], training.seq_learning_rate,
                              training.sizes, training.steps_per_execution)
        fit_link(model, target, inputs, y, training,
                 None if validation is None else (as_source(source, validation[0]),
                                                  validation[1]))
        return TrainedLink(kind, [ExportPart("link", logits_model(model), [inputs[rows]])],
                           lambda batch: activated(target, model, as_source(source, batch)),
                           x[rows])
    parts = build_decoder(source, target, training.seq_learning_rate, training.sizes,
                          training.steps_per_execution)
    teacher, mask = teacher_inputs(y)
    checked = None
    if validation is not None:
        val_teacher, val_mask = teacher_inputs(validation[1])
        checked = ([as_source(source, validation[0]), val_teacher],
                   np.rint(validation[1]).astype(np.int32), val_mask)
    fit_rows(parts.trainer, [inputs, teacher], np.rint(y).astype(np.int32), training, checked,
             sample_weight=mask)
    _, recorded = keras_decode(parts, source, target, x[rows], record=True)
    return TrainedLink(
        kind,
        [ExportPart("encoder", parts.encoder, [inputs[rows]]),
         ExportPart("decoder", parts.step,
                    step_representative(recorded, training.representative_rows, training.seed))],
        lambda batch: keras_decode(parts, source, target, batch)[0],
        x[rows],
    )
