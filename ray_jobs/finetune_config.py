"""Typed configuration of fine-tuning / linear-probing runs, by composition over the pretraining
config: :class:`FinetuneConfig` is a :class:`ray_jobs.config.TrainConfig` (same
``model``/``data``/``train``/``optim``/``checkpoint``/``mlflow`` sections, same ``--set`` overrides,
same path resolution) plus three sections:

* ``encoder`` — where the encoder weights come from: ``scratch`` (``AnySat.from_size(model.size)``),
  ``checkpoint`` (a pretraining run: its EMA teacher), ``mlflow`` (a registered model URI
  ``models:/<name>/<version>`` or a run's logged model), ``official`` (the released ``AnySat.pth``);
* ``task`` — which store label, head, loss, fixed patch size and monitored metric;
* ``eval`` — test split, early stopping, which checkpoint the test numbers come from.

``mode: ft`` trains every weight; ``mode: lp`` freezes the encoder (eval mode, no grad) and trains
only the head; ``mode: lpplus`` (the official ``freeze_new``) trains the head and the projectors of the
task's sensors the encoder weights have none for (``hls`` on the released weights), built from the
sensor registry and initialised as the official code does, the rest frozen and in eval mode. Unset task fields are filled from the dataset registry (``pipelines.datasets``) by
:func:`resolve_task`, so a config names only what differs from the paper defaults.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipelines.datasets import get_dataset
from ray_jobs.config import ConfigError, MlflowConfig, Section, TrainConfig
from ray_jobs.plan import DataPlan

__all__ = ["EncoderSource", "TaskConfig", "EvalConfig", "FinetuneConfig", "resolve_task", "ResolvedTask",
           "DEFAULT_LOSS", "DEFAULT_MONITOR"]

Kind = Literal["multilabel", "multiclass", "segmentation"]

DEFAULT_LOSS = {"multilabel": "bce", "multiclass": "ce", "segmentation": "ce_weighted"}
DEFAULT_MONITOR = {"multilabel": "f1_weighted", "multiclass": "f1_macro", "segmentation": "miou"}


class EncoderSource(Section):
    source: Literal["scratch", "checkpoint", "mlflow", "official"] = "scratch"
    uri: str | None = None
    """checkpoint: a Ray Train checkpoint folder, its ``state.pt``, or a run folder
    (``<storage_path>/<name>``, latest checkpoint); mlflow: ``models:/<name>/<version|alias>`` or
    ``runs:/<run_id>/encoder_model``; official: path to ``AnySat.pth``. Local paths or ``s3://``."""
    weights: Literal["teacher", "student"] = "teacher"
    """Which encoder of a pretraining run (the paper fine-tunes the EMA teacher). ``checkpoint``: the
    group read from ``state.pt``; ``mlflow``: checked against the logged model (the pretraining
    service registers the teacher)."""
    attention: Literal["tokens", "flash-heads"] | None = None
    """Combiner attention: ``tokens`` (ordinary attention) or ``flash-heads`` (what the official code
    computes with flash-attn on a GPU); default: the checkpoint's / ``model.kwargs``."""

    @model_validator(mode="after")
    def _uri_needed(self):
        if self.source != "scratch" and not self.uri:
            raise ValueError(f"encoder.source={self.source} needs encoder.uri")
        return self


class TaskConfig(Section):
    label: str | None = None
    """Store label array (``labels/<label>``); default: the dataset's first label."""
    kind: Kind | None = None
    """Default: the label's task in the registry."""
    head: Literal["tile", "dense"] | None = None
    """tile: LayerNorm+Linear on the tile token; dense: per sub-patch (default for segmentation)."""
    output_modality: str | None = None
    """Dense head: the sensor whose sub-patch grid gives the output pixels (PASTIS s2, FLAIR aerial-flair)."""
    proj_size: int = Field(default=1, ge=1)
    """Dense head: each sub-patch token predicts proj_size x proj_size pixels (FLAIR 10)."""
    patch_size_m: int | None = None
    """Fixed patch size P (the paper fine-tunes at one scale per experiment); default the dataset
    entry's first."""
    loss: Literal["bce", "ce", "ce_ignore", "ce_weighted"] | None = None
    monitor: str | None = None
    """Validation metric (without ``val/``) for best checkpoint / early stopping; higher is better."""
    conventions: list[Literal["pastis", "pangaea", "bradd", "sickle"]] = Field(default_factory=list)
    """Paper-comparable segmentation metrics to log beside the standard ones (anysat.metrics)."""
    ignore_index: int | None = None
    """Label value left out of the standard segmentation metrics; default: the registry's."""

    @field_validator("patch_size_m")
    @classmethod
    def _p(cls, v):
        if v is not None and (v <= 0 or v % 10):
            raise ValueError("patch_size_m must be a positive multiple of 10")
        return v


class EvalConfig(Section):
    test_split: str | list[str] | None = "test"
    """Split evaluated at the end of training (``test/<metric>``): a store split, an alias (PASTIS-HD
    ``test`` = fold5) or a list of store splits; null skips it."""
    val_batches: int | None = Field(default=None, ge=1)
    """Batches per rank per validation; null = the whole validation split."""
    patience: int | None = Field(default=10, ge=1)
    """Early stopping: evaluations without improvement of the monitored metric; null = never stop."""
    restore_best: bool = True
    """Test with the weights of the best validation evaluation (else the last weights)."""
    plots: bool = True
    """Log the confusion-matrix / prediction-grid plots and the per-class table of the test split."""
    test_crop: Literal["centre", "random", "multi"] = "centre"
    """Test-time window of a sensor cropped in training (``data.datasets[].crop``): ``centre``;
    ``random``, one window per tile drawn from (seed, tile) (the official TreeSatAI test transform is
    the training RandomCrop); ``multi``, the model on every window of ``crop_offsets``, logits summed
    over the whole image and divided by how many windows cover each pixel (the official FLAIR
    evaluation). Validation always uses the centre window."""
    crop_offsets: list[tuple[int, int]] = Field(
        default_factory=lambda: [(0, 0), (0, 12), (12, 0), (12, 12), (6, 6)])
    """``test_crop: multi``: (row, col) offsets of the windows in pixels of the cropped sensor
    (default: the official FLAIR five, for 500 px windows of the 512 px image)."""


class FinetuneMlflow(MlflowConfig):
    experiment: str = "anysat-finetune"


class FinetuneConfig(TrainConfig):
    mode: Literal["ft", "lp", "lpplus"] = "ft"
    encoder: EncoderSource = Field(default_factory=EncoderSource)
    task: TaskConfig = Field(default_factory=TaskConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    mlflow: FinetuneMlflow = Field(default_factory=FinetuneMlflow)

    @model_validator(mode="after")
    def _one_dataset(self):
        if len(self.data.datasets) != 1:
            raise ValueError(f"fine-tuning uses exactly one dataset, got {[d.name for d in self.data.datasets]}")
        if self.checkpoint.every % self.train.log_every:
            raise ValueError(f"checkpoint.every ({self.checkpoint.every}) must be a multiple of "
                             f"train.log_every ({self.train.log_every})")
        return self

    @property
    def dataset(self):
        return self.data.datasets[0]


class ResolvedTask(Section):
    """Everything the trainer needs about the task, fully specified (travels to the workers)."""

    dataset: str
    label: str
    kind: Kind
    classes: list[str]
    head: Literal["tile", "dense"]
    output_modality: str | None
    proj_size: int
    patch_size_m: int
    loss: str
    monitor: str
    conventions: list[str]
    ignore_index: int | None


def resolve_task(cfg: FinetuneConfig, plan: DataPlan | None = None) -> ResolvedTask:
    """Fill the task defaults from the registry (and the data plan, when given). ConfigError on
    a label the dataset does not have, a dense head on a tile task, etc."""
    entry = cfg.dataset
    spec = get_dataset(entry.name)
    labels = {lab.name: lab for lab in spec.labels}
    if not labels:
        raise ConfigError(f"dataset {entry.name} has no labels: nothing to fine-tune on")
    name = cfg.task.label or spec.labels[0].name
    if name not in labels:
        raise ConfigError(f"task.label {name!r}: dataset {entry.name} has labels {sorted(labels)}")
    lab = labels[name]
    kind = cfg.task.kind or lab.task
    if kind not in DEFAULT_LOSS:
        raise ConfigError(f"label {name!r} has task {lab.task!r}, which cannot be fine-tuned")
    head = cfg.task.head or ("dense" if kind == "segmentation" else "tile")
    if (head == "dense") != (kind == "segmentation"):
        raise ConfigError(f"task.head={head} does not fit a {kind} task")
    sensors = list(plan.sensors) if plan else list(entry.sensors or spec.model_sensors)
    out_mod = cfg.task.output_modality
    if head == "dense":
        out_mod = out_mod or sensors[0]
        if out_mod not in sensors:
            raise ConfigError(f"task.output_modality {out_mod!r} is not among the sensors {sensors}")
    patch = cfg.task.patch_size_m or (plan.patch_sizes_m[0] if plan else
                                      (entry.patch_sizes_m or list(spec.patch_sizes_m))[0])
    loss = cfg.task.loss or DEFAULT_LOSS[kind]
    if kind == "multilabel" and loss != "bce" or kind != "multilabel" and loss == "bce":
        raise ConfigError(f"task.loss={loss} does not fit a {kind} task")
    monitor = cfg.task.monitor or DEFAULT_MONITOR[kind]
    return ResolvedTask(dataset=entry.name, label=name, kind=kind, classes=list(lab.classes), head=head,
                        output_modality=out_mod, proj_size=cfg.task.proj_size, patch_size_m=int(patch),
                        loss=loss, monitor=monitor, conventions=list(cfg.task.conventions),
                        ignore_index=cfg.task.ignore_index if cfg.task.ignore_index is not None
                        else lab.ignore_index)
