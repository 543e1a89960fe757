"""The interface between what is trained (a task) and how (tff_prune).

`tff_prune` never names a task. It needs a task to give it:

* its data: training and held-out client ids, batched client datasets
  (`FederatedTask`), and, where it can, a serializable dataset function
  (`WorkerDatasets`) that builds a client's dataset from its id inside TFF's
  workers, so that only ids cross the wire;
* its model and loss: a fresh Keras model, a per-example loss on a batch;
* its metrics: per-batch sums computed in graph (so they add up exactly over
  batches and clients) and how to turn the summed counts into rates;
* its pruning structure (`ModelStructure`): which slices of which kernels
  are pruned together (an FFN's hidden unit is a column of its first layer and
  a row of its second; an attention head; a conv channel through a pipeline);
* its compaction (`Compactor`): how a masked model is rebuilt physically
  smaller, for compact rounds and the export;
* its serving side (`TaskExport`): a model rebuilt from the run's saved
  record (no data loaded), the SavedModel signatures a served request
  uses, and (optionally) the inputs and loss of one on-device training step
  (`OnDeviceTraining`).

A task is registered by name in `tff_prune.program.registry` with its flags (`TaskSpec`);
`--task=NAME` picks it. See docs/adding_a_task.md.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Optional, Protocol

if TYPE_CHECKING:  # annotations only: data loaders import this without TensorFlow
    import tensorflow as tf

    from tff_prune.pruning.units import AttentionGroup, Coupling

Shapes = Mapping[str, Sequence[int]]


class DataError(ValueError):
    """A task's data cannot be used (missing folder, corrupt file): one line."""


class ModelStructure:
    """Which weight slices of a task's model are pruned together.

    Weights are keyed ``"{layer}/{var}"``; `shapes` holds the prunable layers'
    kernels (and biases). Each method returns the groupings among the layers
    in `shapes` (missing layers are skipped). The default declares nothing:
    every column / row is then its own unit, and ``head`` / ``channel``
    structures find nothing to prune.
    """

    def couplings(self, shapes: Shapes) -> Sequence[Coupling]:
        """Slices pruned together by the column and row structures (producer
        column j <-> consumer row j, GLU pairs, flattening, ...)."""
        return ()

    def attention_groups(self, shapes: Shapes) -> Sequence[AttentionGroup]:
        """The multi-head attention blocks (for ``--structure=head``)."""
        return ()

    def conv_groups(self, shapes: Shapes) -> Sequence[Sequence[Coupling]]:
        """The couplings of each convolution pipeline (``--structure=channel``)."""
        return ()


class Compactor(Protocol):
    """A task's compaction of a masked model into a physically smaller one.

    It may also define ``compact_with_report(model) -> (model,
    tff_prune.export.compaction.CompactionReport)``, which the export records
    (units removed per kind); without it the export reports parameter counts.
    """

    def compact(self, model: tf.keras.Model) -> tuple[tf.keras.Model, Hashable]:
        """A stripped, masked model rebuilt without inert units, and its widths."""

    def build(self, widths: Hashable) -> tf.keras.Model:
        """A fresh model of `widths`, to train."""


@dataclasses.dataclass(frozen=True)
class WorkerDatasets:
    """Client datasets built inside TFF's workers from client ids.

    `dataset_fn(client_id, seed)` takes a scalar string and a scalar int64
    tensor and returns the client's batched dataset (`batch_spec`
    elements; training data shuffled and augmented from `seed`). It is traced
    into a TFF computation, so it may use core TensorFlow ops only (TFF's C++
    worker has no custom ops) and must open its files by paths relative to
    `root`: every worker runs in its own copy of `root` (the controller's
    local worker in `root` itself). `client_dataset` should be this same
    function with `root` made absolute, so both paths give the same data.
    """

    dataset_fn: Callable[[tf.Tensor, tf.Tensor], tf.data.Dataset]
    root: str


@dataclasses.dataclass(frozen=True)
class Metric:
    """One held-out metric: its name and whether lower is better.

    A `detail` metric is a breakdown (e.g. one per class): written to eval.csv
    and summary.json, left out of report tables and progress lines.
    """

    name: str
    lower_is_better: bool = True
    description: str = ""
    detail: bool = False


class FederatedTask(abc.ABC):
    """A federated learning task: data, model, loss, metrics and structure."""

    name: str

    # -- data -------------------------------------------------------------------

    @property
    @abc.abstractmethod
    def train_client_ids(self) -> Sequence[str]:
        """Clients of the training population (sorted)."""

    @property
    @abc.abstractmethod
    def test_client_ids(self) -> Sequence[str]:
        """Held-out clients, never seen in training (sorted)."""

    @abc.abstractmethod
    def client_dataset(self, client_id: str, *, training: bool,
                       seed: int = 0) -> tf.data.Dataset:
        """Batched dataset of one client (`batch_spec` elements)."""

    @abc.abstractmethod
    def pooled_dataset(self, *, training: bool, seed: int = 0) -> tf.data.Dataset:
        """All clients of the split pooled (for centralized training/eval)."""

    @property
    @abc.abstractmethod
    def batch_spec(self) -> Any:
        """`tf.TensorSpec` structure of one batch, as `client_dataset` yields."""

    def worker_datasets(self, *, training: bool) -> Optional[WorkerDatasets]:
        """The split's datasets as a function of client ids, built in TFF's
        workers (None: the controller builds each cohort's datasets and sends
        them, which bounds cohorts by gRPC's message size)."""
        return None

    # -- model and loss -----------------------------------------------------------

    @abc.abstractmethod
    def build_model(self) -> tf.keras.Model:
        """A fresh, unpruned Keras model; the pruning library wraps its layers."""

    @abc.abstractmethod
    def batch_loss(self, model: tf.keras.Model, batch: Any,
                   training: bool) -> tuple[tf.Tensor, tf.Tensor]:
        """(mean loss over the batch's examples, number of examples)."""

    # -- metrics ------------------------------------------------------------------

    @property
    @abc.abstractmethod
    def metrics(self) -> Sequence[Metric]:
        """The held-out metrics `finalize_metrics` reports; the first is the
        headline (report plots, progress line)."""

    @abc.abstractmethod
    def metric_sums(self, model: tf.keras.Model, batch: Any) -> Mapping[str, tf.Tensor]:
        """Per-batch float64 counts, in graph (summed over batches and clients).

        Must not include ``loss_sum`` or ``num_examples``: the library adds
        those from `batch_loss`.
        """

    @abc.abstractmethod
    def finalize_metrics(self, sums: Mapping[str, float]) -> dict[str, float]:
        """The `metrics` from summed counts (`metric_sums`' keys)."""

    # -- pruning, compaction, export ----------------------------------------------

    @property
    def excluded_layers(self) -> str:
        """Regex of layers kept dense unless `--exclude_layers` says otherwise."""
        return ""

    @property
    def model_structure(self) -> ModelStructure:
        """Which kernel slices are pruned together (default: none coupled)."""
        return ModelStructure()

    def compactor(self) -> Optional[Compactor]:
        """How the masked model is made physically smaller (None: it is not)."""
        return None

    @abc.abstractmethod
    def model_record(self) -> dict[str, Any]:
        """JSON-able record from which `TaskSpec.export` rebuilds the model
        (saved beside the final weights)."""

    @abc.abstractmethod
    def describe(self) -> Mapping[str, Any]:
        """JSON-able facts about the task (data sizes, model config)."""


@dataclasses.dataclass(frozen=True)
class OnDeviceTraining:
    """What a task's on-device training artifact reads and computes.

    `train_inputs`: one local step's batch, flat, by input name (the
    ``train`` signature's inputs); `loss(model, inputs)`: (mean loss, number
    of examples) from them, with TFLite-runnable ops (core TensorFlow ops,
    TFLite's select TF ops allowed); `infer_inputs` and `infer(model,
    inputs)`: the ``infer`` signature's inputs and its outputs by name.
    """

    train_inputs: Mapping[str, tf.TensorSpec]
    loss: Callable[[tf.keras.Model, Mapping[str, tf.Tensor]], tuple[tf.Tensor, tf.Tensor]]
    infer_inputs: Mapping[str, tf.TensorSpec]
    infer: Callable[[tf.keras.Model, Mapping[str, tf.Tensor]], Mapping[str, tf.Tensor]]


class TaskExport(abc.ABC):
    """A task's serving side, rebuilt from a run's `model_record` (no data)."""

    #: The TF Serving model name exports default to.
    model_name: str

    @abc.abstractmethod
    def build_model(self) -> tf.keras.Model:
        """The unpruned model the run's weights load into."""

    def compactor(self) -> Optional[Compactor]:
        """The task's compaction (None: exports keep the masked model)."""
        return None

    @abc.abstractmethod
    def max_output_difference(self, a: tf.keras.Model, b: tf.keras.Model) -> float:
        """max |output_a - output_b| on a fixed, task-shaped test batch (the
        check that a compact model computes what the masked one does)."""

    @abc.abstractmethod
    def save_serving_model(self, model: tf.keras.Model, path: str) -> Sequence[str]:
        """Writes the serving SavedModel at `path`; returns its signature names."""

    def metadata(self) -> dict[str, Any]:
        """Extra JSON facts stored with the export (model and front-end config)."""
        return {}

    #: The signature `save_serving_model` writes that is converted to TFLite
    #: (TFLite builtin ops only; None: exports write no ``.tflite``).
    tflite_signature: Optional[str] = None

    def example_request(self) -> Optional[tuple[str, Mapping[str, Any]]]:
        """One typical served request, (signature name, input tensors by name),
        for latency measurements (None: the export is not timed)."""
        return None

    def on_device_training(self) -> Optional[OnDeviceTraining]:
        """The inputs, loss and inference of the on-device training artifact
        (`tff_prune.export.on_device`; None: exports write none)."""
        return None

    def example_training_batch(self) -> Optional[Mapping[str, Any]]:
        """One typical on-device training batch (`on_device_training`'s
        `train_inputs` by name), for step latency measurements."""
        return None


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A registered task: how flags become its config, and its builders.

    `define_flags()` declares the task's absl flags (once, at import of the
    experiment flags); `config_from_flags(flags, *, batch_size, seed)`
    returns its frozen, JSON-able config dataclass (raising
    `tff_prune.pruning.config.ConfigError` with one line on a bad value);
    `build(config)` loads its data and returns the `FederatedTask`;
    `export(record)` returns its `TaskExport` for a saved `model_record`;
    `user_errors` are the exception types that mean bad user input (corrupt or
    missing data), reported as one line; `default_config()` is the config
    with every flag at its default; `default_client_batch_size` is the
    local batch of a federated run unless a flag says otherwise.
    """

    name: str
    define_flags: Callable[[], None]
    config_from_flags: Callable[..., Any]
    build: Callable[[Any], FederatedTask]
    export: Callable[[Mapping[str, Any]], TaskExport]
    user_errors: tuple[type[Exception], ...] = ()
    default_config: Optional[Callable[[], Any]] = None
    # The local batch of a federated run when --client_batch_size is not given.
    default_client_batch_size: int = 8
