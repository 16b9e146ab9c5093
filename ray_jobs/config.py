"""Typed run configuration shared by the pretraining and fine-tuning entrypoints.

A run is described by one YAML file plus ``--set dotted.key=value`` overrides. Every section is a
pydantic model with ``extra="forbid"`` so a typo (``train.max_step``) fails loudly at submit time
instead of silently training with a default. ``TrainConfig`` holds the sections every Ray Train job
needs (model, data, train, optim, checkpoint, mlflow, storage, scale); ``PretrainConfig`` adds the
JEPA section. A fine-tuning config subclasses ``TrainConfig`` the same way.

Values given with ``--set`` are parsed as YAML scalars (``--set train.max_steps=20`` is an int,
``--set optim.betas=[0.9,0.95]`` a list, ``--set mlflow.registered_model_name=null`` None). List
items are addressed by index (``data.datasets.0.batch_size=4``) or, for lists of named entries, by
name (``data.datasets.planted.batch_size=4``).
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from pipelines.store_meta import existing_format
from ray_jobs.overrides import ConfigError, apply_overrides, one_line, parse_override, read_yaml
from ray_jobs.epochs import EpochFields

__all__ = [
    "ConfigError", "Section", "ModelConfig", "DatasetEntry", "DataConfig", "TrainLoopConfig",
    "OptimConfig", "CheckpointConfigSection", "MlflowConfig", "FaultInjection", "TrainConfig",
    "JEPAConfig", "PretrainConfig", "load_config", "apply_overrides", "parse_override",
    "check_stores", "check_outputs", "store_url", "resolve_paths",
]


def _types(annotation: Any) -> set:
    """The types a field annotation accepts, unions flattened (``int | None`` -> {int, NoneType})."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return set().union(*(_types(a) for a in typing.get_args(annotation)))
    return {annotation}


class Section(BaseModel):
    # forbid: unknown keys are errors; validate_assignment: `cfg.train.max_steps = "x"` fails too.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_number_mixups(cls, v: Any, info: ValidationInfo) -> Any:
        """A number field takes no ``true``/``false`` and a flag takes nothing else (pydantic would
        read ``max_steps: true`` as 1 and ``use_gpu: 1`` or ``"yes"`` as true)."""
        accepted = _types(cls.model_fields[info.field_name].annotation)
        if isinstance(v, bool) and bool not in accepted and accepted & {int, float}:
            raise ValueError("expected a number, not true/false")
        if v is not None and not isinstance(v, bool) and bool in accepted and accepted <= {bool, type(None)}:
            raise ValueError("expected true or false")
        return v


# --------------------------------------------------------------------------------------- sections
class ModelConfig(Section):
    size: str = "tiny"
    """AnySat size preset (``tiny`` = hub-tiny D 256 / depth 2, ``small``, ``base``)."""
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra keyword arguments forwarded to the AnySat constructor (e.g. ``attention: flash-heads``)."""
    init_from: str | None = None
    """Optional encoder state dict (path or URL) to start from."""


class DatasetEntry(Section):
    """One dataset of the mixture. Unset fields fall back to the dataset registry
    (``pipelines.datasets``): batch size, sampling weight, patch sizes, sensors."""

    name: str
    store: str | None = None
    """Store URL; default ``<data.root>/<name>.zarr``."""
    split: str | list[str] = "train"
    """Training split: a store split, an alias from the registry (PASTIS-HD ``train`` = fold1-3,
    ``DatasetSpec.split_folds``), or an explicit list of store splits (``[fold1, fold2, fold3]``)."""
    val_split: str | list[str] | None = "val"
    """Validation split, same forms; ignored (no validation) when the store lacks it."""
    batch_size: int | None = Field(default=None, ge=1)
    weight: float | None = Field(default=None, gt=0)
    patch_sizes_m: list[int] | None = None
    sensors: list[str] | None = None
    """Sensors fed to the model; default the registry's ``model_sensors`` present in the store."""
    temporal_dropout: float | int | None = None
    """Float p in [0, 1): keep floor(T·(1−p)) random dates; int n: keep at most n dates (train only)."""
    crop: dict[str, int] = Field(default_factory=dict)
    """Random square crop in pixels per sensor (GeoPlex: aerial 300, aerial-flair 500)."""
    date_origin: str | None = None
    """None / ``doy``: 1-based day of year; ``YYYY-MM-DD``: days since that date (PASTIS 2018-09-01)."""
    allow_filled_bands: list[str] = Field(default_factory=list)
    """``<sensor>/<band>`` model bands that may be zero-filled or missing (else an error; ray_jobs/normalization.py)."""

    @field_validator("patch_sizes_m")
    @classmethod
    def _patch_multiple_of_10(cls, v):
        if v is not None:
            if not v:
                raise ValueError("patch_sizes_m must not be empty")
            bad = [p for p in v if p <= 0 or p % 10]
            if bad:
                raise ValueError(f"patch sizes must be positive multiples of 10 m, got {bad}")
        return v

    @field_validator("temporal_dropout")
    @classmethod
    def _dropout_range(cls, v):
        if isinstance(v, float) and not 0.0 <= v < 1.0:
            raise ValueError("a float temporal_dropout is a fraction in [0, 1)")
        if isinstance(v, int) and not isinstance(v, bool) and v < 1:
            raise ValueError("an integer temporal_dropout is a maximum number of dates (>= 1)")
        return v


class DataConfig(Section):
    root: str = "data/stores"
    """Folder (or ``s3://`` prefix) holding ``<name>.zarr`` stores."""
    datasets: list[DatasetEntry]
    storage_options: dict[str, Any] = Field(default_factory=dict)
    """fsspec options for remote stores (e.g. ``endpoint_url``); never logged."""
    prefetch_batches: int = Field(default=1, ge=0)
    read_num_cpus: float = Field(default=0.25, gt=0)
    """CPUs per Ray Data read task (fractional so reads fit beside the training workers)."""
    read_concurrency: int | None = Field(default=None, ge=1)
    """Read tasks in flight per stream; a few long-lived ones keep their warm heaps (None: Ray Data's choice)."""
    read_resources: dict[str, float] = Field(default_factory=dict)
    """Custom Ray resources per read task: ``{loader: 1}`` puts reads on nodes that advertise it (the
    KubeRay CPU worker group), off the GPU nodes."""
    tokens_per_batch: int | None = Field(default=None, ge=1)
    """Token budget per step: batch = budget // tokens per sample at the drawn patch size (ray_jobs/batching.py)."""
    val_batches: int = Field(default=2, ge=0)
    """Batches per dataset per evaluation."""
    normalization: str = Field(default="anysat", min_length=1)
    """``anysat`` (per-sample-averaged statistics), ``pooled`` or a JSON of mean/std (ray_jobs/normalization.py)."""

    @field_validator("datasets")
    @classmethod
    def _unique_names(cls, v):
        if not v:
            raise ValueError("at least one dataset is required")
        names = [d.name for d in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate dataset entries: {dup}")
        return v


class FaultInjection(Section):
    """Test hook: rank ``rank`` SIGKILLs its own process at step ``step``, once (the marker file
    records that it happened, so the restarted worker group does not die again)."""

    rank: int = 1
    step: int
    marker: str


class TrainLoopConfig(Section, EpochFields):
    max_steps: int = Field(default=300, ge=1)
    log_every: int = Field(default=10, ge=1)
    eval_every: int = Field(default=0, ge=0)
    """0 disables evaluation."""
    grad_clip: float | None = Field(default=None, gt=0)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 autocast on GPU, fp32 on CPU."""
    cpus_per_worker: float = Field(default=1.0, gt=0)
    max_failures: int = Field(default=2, ge=-1)
    """Worker-group restarts from the latest checkpoint before the run fails (-1: unlimited)."""
    preview: bool = True
    """Log a per-dataset batch preview plot at the start of the run."""
    fault_injection: FaultInjection | None = None


class OptimConfig(Section):
    name: Literal["adamw"] = "adamw"
    lr: float = Field(default=5e-5, gt=0)
    weight_decay: float = Field(default=0.05, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    scheduler: Literal["constant", "cosine", "plateau"] = "constant"
    warmup_steps: int = Field(default=0, ge=0)
    min_lr: float = 0.0
    """Cosine floor."""
    plateau_factor: float = 0.1
    plateau_patience: int = 10
    """Plateau: evaluations without improvement of ``val/loss`` before lr × factor."""


class CheckpointConfigSection(Section):
    every: int = Field(default=50, ge=1)
    num_to_keep: int | None = Field(default=2, ge=1)


class MlflowConfig(Section):
    tracking_uri: str | None = None
    """Default: ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db`` (made absolute at submit)."""
    experiment: str = "anysat-pretrain"
    registered_model_name: str | None = None
    log_model: bool = True
    enabled: bool = True


class TrainConfig(Section):
    """Sections every Ray Train job of this project shares (pretraining and fine-tuning)."""

    name: str = "anysat"
    """Run name: Ray Train run folder under ``storage_path`` (resubmitting it resumes) and MLflow run name."""
    seed: int = 32
    num_workers: int = Field(default=1, ge=1)
    use_gpu: bool = False
    storage_path: str = "runs"
    """Ray Train run storage (checkpoints): local folder or ``s3://bucket/prefix``."""
    storage_options: dict[str, Any] = Field(default_factory=dict)
    """S3 settings for ``storage_path`` in fsspec terms (``endpoint_url``, ``region``; credentials
    preferably from the environment). Never logged."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig
    train: TrainLoopConfig = Field(default_factory=TrainLoopConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    checkpoint: CheckpointConfigSection = Field(default_factory=CheckpointConfigSection)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v):
        if not v or "/" in v or v.startswith("."):
            raise ValueError("name must be a plain folder name (no '/')")
        return v


class JEPAConfig(Section):
    ema: tuple[float, float] = (0.996, 1.0)
    """Teacher momentum, linear from the first to the second value over ``train.max_steps``."""
    temperature: float = Field(default=0.1, gt=0)
    loss_weights: dict[Literal["pred", "con"], float] = Field(default_factory=lambda: {"pred": 1.0, "con": 1.0})
    """Prediction (smooth-L1) and contrastive (MIL-NCE) loss weights."""
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra keyword arguments forwarded to ``anysat.pretrain.jepa.JEPA``."""


class PretrainConfig(TrainConfig):
    jepa: JEPAConfig = Field(default_factory=JEPAConfig)

    @model_validator(mode="after")
    def _checkpoint_vs_log(self):
        # Metrics are logged every log_every steps; a checkpoint step must also be a logged step so
        # a resumed run can tell exactly which steps are already in MLflow.
        if self.checkpoint.every % self.train.log_every:
            raise ValueError(f"checkpoint.every ({self.checkpoint.every}) must be a multiple of "
                             f"train.log_every ({self.train.log_every})")
        return self


def _field_names(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names valid at ``loc`` (for did-you-mean hints)."""
    cls: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or cls is None:
            continue
        f = cls.model_fields.get(part) if hasattr(cls, "model_fields") else None
        if f is None:
            return []
        ann = f.annotation
        cls = None
        for cand in (ann, *getattr(ann, "__args__", ())):
            for sub in (cand, *getattr(cand, "__args__", ())):
                if isinstance(sub, type) and issubclass(sub, BaseModel):
                    cls = sub
    return list(cls.model_fields) if cls is not None and hasattr(cls, "model_fields") else []


def _format_errors(err: ValidationError, model: type[BaseModel], source: str) -> str:
    """One line: ``invalid config (<file>): <problem>; <problem>; ...``."""
    problems = []
    for e in err.errors():
        loc = tuple(e["loc"])
        key = ".".join(str(p) for p in loc) or "<root>"
        if e["type"] == "extra_forbidden":
            hint = difflib.get_close_matches(str(loc[-1]), _field_names(model, loc), n=1)
            problems.append(f"unknown key '{key}'" + (f" (did you mean '{hint[0]}'?)" if hint else ""))
        elif e["type"] == "missing":
            problems.append(f"missing required key '{key}'")
        else:
            problems.append(f"{key}: {one_line(e['msg']).removeprefix('Value error, ')} (got {e.get('input')!r})")
    return f"invalid config ({source}): " + "; ".join(problems)


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None,
                cls: type[TrainConfig] = PretrainConfig, raw: dict | None = None) -> TrainConfig:
    """YAML file (or an already-loaded dict) + ``--set`` overrides -> validated config."""
    if raw is None:
        if path is None:
            raise ConfigError("a config file is required")
        raw = read_yaml(path)
    raw = apply_overrides(raw, overrides)
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, cls, str(path or "<dict>"))) from None


# ------------------------------------------------------------------------------ paths and stores
def _is_url(s: str) -> bool:
    return "://" in s


def store_url(cfg: TrainConfig, entry: DatasetEntry) -> str:
    if entry.store:
        return entry.store
    return f"{cfg.data.root.rstrip('/')}/{entry.name}.zarr"


def resolve_paths(cfg: TrainConfig, base: str | os.PathLike | None = None) -> TrainConfig:
    """Make every local path absolute against ``base`` (the submitting shell's cwd).

    Ray Train workers run in other working directories (and, under ``ray job submit``, in a copy of
    the working dir), so relative paths must be pinned down once, in the driver, before the config
    is shipped to the workers."""
    base = Path(base or os.getcwd())

    def fix(p: str) -> str:
        if _is_url(p):
            if p.startswith("file://"):
                return str((base / p[len("file://"):]).resolve())
            return p
        return str((base / os.path.expanduser(p)).resolve())

    cfg = cfg.model_copy(deep=True)
    cfg.data.root = fix(cfg.data.root)
    cfg.storage_path = fix(cfg.storage_path)
    for d in cfg.data.datasets:
        if d.store:
            d.store = fix(d.store)
    uri = cfg.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str((base / uri[len("sqlite:///"):]).resolve())
    elif not _is_url(uri):  # a plain folder: MLflow's file store
        uri = str((base / uri).resolve())
    cfg.mlflow.tracking_uri = uri
    return cfg


def check_stores(cfg: TrainConfig) -> None:
    """Fail before starting Ray Train if a store is missing, listing all of them."""
    missing = []
    for d in cfg.data.datasets:
        url = store_url(cfg, d)
        # Something that is there but not a store is StoreReader's error to name, with the reason.
        if existing_format(url, cfg.data.storage_options if _is_url(url) else None) is None:
            missing.append(f"{d.name}: {url}")
    if missing:
        raise ConfigError(f"missing stores ({'; '.join(missing)}): build them with `make sample-data ingest "
                          "DATASET=<name>` or point data.root / data.datasets.<name>.store elsewhere")


def _unwritable(path: Path) -> str | None:
    """Why the folder ``path`` cannot be created or written (``None`` when it can)."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        return f"{p} is not a folder"
    if not os.access(p, os.W_OK | os.X_OK):
        return f"{p} is not writable"
    return None


def check_outputs(cfg: TrainConfig) -> None:
    """Before a training job starts: its local ``storage_path`` and its sqlite MLflow database can be
    written (remote ones are the cluster's to reach)."""
    problems = []
    if not _is_url(cfg.storage_path):
        why = _unwritable(Path(cfg.storage_path) / cfg.name)
        if why:
            problems.append(f"storage_path {cfg.storage_path}: {why}")
    uri = cfg.mlflow.tracking_uri or ""
    if cfg.mlflow.enabled and uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if db.is_dir():
            why = f"{db} is a folder"
        elif db.exists():
            why = None if os.access(db, os.W_OK) else f"{db} is not writable"
        else:
            why = _unwritable(db.parent)
        if why:
            problems.append(f"mlflow.tracking_uri {uri}: {why}")
    if problems:
        raise ConfigError("; ".join(problems))
