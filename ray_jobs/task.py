"""The fine-tuning task as a library: set-up, model, encoder weights, evaluation.

* :func:`prepare_task`: config file + ``--set`` -> (config, data plan, resolved task), every check
  that can run before any work (stores, splits, label);
* :class:`FinetuneModel` / :func:`build_task_model`: encoder + head (:mod:`anysat.heads`) + loss;
* :func:`load_encoder`: the encoder of ``cfg.encoder`` — scratch, a pretraining checkpoint's EMA
  teacher (or student), a model logged to MLflow by pretraining, or the official ``AnySat.pth`` —
  with the projectors of the task's sensors only;
* :func:`load_finetuned` / :func:`model_from_state`: a fine-tuned model back from its checkpoint
  alone (the architecture is read off the tensors);
* :func:`eval_batches` / :func:`run_evaluation`: loss and metrics of a split, synchronised over ranks.

Used by the fine-tuning loop, by ``ray_jobs.evaluate`` and by ``ray_jobs.embed``.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import fsspec
import numpy as np
import torch
import yaml

from anysat import AnySat
from anysat.heads import DenseSegmenter, TaskModel, TileClassifier
from anysat.losses import build_loss
from anysat.metrics import TaskMetrics
from anysat.multicrop import FLAIR_OFFSETS, multicrop_logits, windows_per_sample
from pipelines.store import StoreReader
from ray_jobs.config import ConfigError, check_stores, load_config, resolve_paths
from ray_jobs.data import ReadRange, collate, stream_items
from ray_jobs.finetune_config import FinetuneConfig, ResolvedTask, resolve_task
from ray_jobs.plan import DataPlan, Split, resolve_plans
from ray_jobs.runtime import (CHECKPOINT_FILE, SNAPSHOT_FILE, all_reduce_mean, join_state, latest_recorded_checkpoint,
                              load_checkpoint_state)
from ray_jobs.tracking import download_model

__all__ = ["FT_STATE_FILE", "prepare_task", "FinetuneModel", "build_task_model", "find_checkpoint_file",
           "load_encoder", "model_from_state", "load_finetuned", "eval_batches", "targets_from_batch",
           "check_shapes", "run_evaluation"]

log = logging.getLogger(__name__)

FT_STATE_FILE = "finetune_state.pt"
"""Beside the training state (``state.pt``): best weights, best value, early-stopping counters, task."""


# ------------------------------------------------------------------------------------------- set-up
def prepare_task(config: str, overrides: list[str]) -> tuple[FinetuneConfig, DataPlan, ResolvedTask]:
    """Config -> (absolute-path config, data plan, resolved task). Raises ConfigError / ValueError /
    FileNotFoundError with the problem named."""
    cfg = resolve_paths(load_config(config, overrides, cls=FinetuneConfig))
    if cfg.encoder.uri and cfg.encoder.source in ("checkpoint", "official") and "://" not in cfg.encoder.uri:
        cfg.encoder.uri = str(Path(cfg.encoder.uri).expanduser().resolve())
    check_stores(cfg)
    plan = resolve_plans(cfg)[cfg.dataset.name]
    task = resolve_task(cfg, plan)
    labels = StoreReader(plan.url, plan.storage_options).label_names
    if task.label not in labels:
        raise ConfigError(f"store {plan.url} has no label {task.label!r} (labels: {labels})")
    return cfg, plan, task


# -------------------------------------------------------------------------------------------- model
class FinetuneModel(torch.nn.Module):
    """:class:`anysat.heads.TaskModel` + its loss."""

    def __init__(self, task_model: TaskModel, criterion: torch.nn.Module):
        super().__init__()
        self.net = task_model
        self.criterion = criterion

    @property
    def encoder(self) -> AnySat:
        return self.net.encoder

    def forward(self, x, pad_mask=None):
        return self.net(x, pad_mask=pad_mask)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Everything but a frozen encoder (linear probing: the head only)."""
        return self.net.trainable_parameters()


def build_task_model(encoder: AnySat, task: ResolvedTask, freeze: bool, train_new: bool = False) -> FinetuneModel:
    """Encoder + head + loss. ``freeze``: LP (the head only); with ``train_new`` LP+ (official
    ``freeze_new``): the head and the projectors of ``encoder.new_sensors`` (those not loaded from the
    weights) train, the rest of the encoder is frozen and in eval mode."""
    k = len(task.classes)
    head = (DenseSegmenter(encoder.embed_dim, k, task.proj_size) if task.head == "dense"
            else TileClassifier(encoder.embed_dim, k))
    new = [s for s in encoder.new_sensors if s in encoder.sensors]
    if freeze and new and not train_new and len(new) < len(encoder.sensors):  # (all new: from scratch)
        log.warning("linear probing with new, untrained projectors for %s (frozen at their random init); "
                    "mode lpplus trains them", new)
    if freeze and train_new and not new:
        log.warning("lpplus: the encoder weights have a projector for every sensor, so only the head trains")
    net = TaskModel(encoder, head, freeze_encoder=freeze, patch_size=task.patch_size_m,
                    output_modality=task.output_modality,
                    train_modules=[f"projector_{s}" for s in new] if freeze and train_new else ())
    return FinetuneModel(net, build_loss(task.loss, k))


def find_checkpoint_file(uri: str, storage_options: dict | None = None, name: str = CHECKPOINT_FILE) -> str:
    """``uri``: a ``state.pt``, a Ray Train checkpoint folder, or a run folder (the latest checkpoint
    Ray Train recorded as complete: :func:`ray_jobs.runtime.latest_recorded_checkpoint`; a folder
    without that record, e.g. of an older Ray, gives its newest ``checkpoint_*``, with a warning).
    Returns a local file path (remote files are downloaded to a temp dir)."""
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}) if "://" in uri else {})
    if fs.isfile(path):
        target = path
    elif fs.exists(f"{path}/{name}"):
        target = f"{path}/{name}"
    elif (recorded := latest_recorded_checkpoint(fs, path, name)) is not None:
        target = f"{recorded}/{name}"
    else:
        ckpts = sorted(p for p in fs.glob(f"{path}/checkpoint_*") if fs.exists(f"{p}/{name}"))
        if not ckpts:
            raise FileNotFoundError(f"no {name} under {uri} (expected a checkpoint or a run folder)")
        target = f"{ckpts[-1]}/{name}"
        log.warning("%s has no record of completed checkpoints (%s): taking the newest folder, %s, which an "
                    "interrupted upload may have left incomplete", uri, SNAPSHOT_FILE, Path(ckpts[-1]).name)
    if "://" not in uri:
        return target
    local = Path(tempfile.mkdtemp(prefix="anysat-ckpt-")) / Path(target).name
    fs.get(target, str(local))
    return str(local)


def _subset(weights, sensors: list[str], attention: str | None) -> AnySat:
    """The encoder of ``weights`` (state dict or file) with the projectors of ``sensors`` only (a task
    fine-tunes on its own sensors). A sensor the weights have no projector for gets a new projector
    from the sensor registry, initialised as the official code does (``AnySat.new_sensors``)."""
    enc = AnySat.from_official(weights, attention=attention or "tokens", sensors=sensors)
    if enc.new_sensors:
        log.info("new projectors (not in the encoder weights): %s", list(enc.new_sensors))
    return enc


def load_encoder(cfg: FinetuneConfig, sensors: list[str]) -> AnySat:
    """The encoder of ``cfg.encoder``, with the projectors of ``sensors`` only; ``.new_sensors`` names
    the projectors that were not in the weights (all of them from scratch)."""
    src = cfg.encoder
    attention = src.attention or cfg.model.kwargs.get("attention")
    if src.source == "scratch":
        kw = dict(cfg.model.kwargs)
        if attention:
            kw["attention"] = attention
        return AnySat.from_size(cfg.model.size, sensors=sensors, **kw)
    if src.source == "official":
        local = find_checkpoint_file(src.uri, cfg.storage_options, name="AnySat.pth") \
            if "://" in src.uri else src.uri
        return _subset(local, sensors, attention)
    if src.source == "checkpoint":
        groups = load_checkpoint_state(find_checkpoint_file(src.uri, cfg.storage_options))["model"]
        # JEPA checkpoint: groups "encoder" (student) and "teacher" (EMATeacher: keys "module.*")
        group = "teacher" if src.weights == "teacher" else "encoder"
        if group not in groups:
            raise ValueError(f"checkpoint {src.uri} has no {group!r} weights (groups: {sorted(groups)})")
        return _subset(groups[group], sensors, attention)
    # mlflow: the model pretraining logged (encoder_state_dict.pt + model_config.yaml)
    d = download_model(cfg.mlflow.tracking_uri, src.uri)
    sd_files = sorted(d.rglob("encoder_state_dict.pt"))
    if not sd_files:
        raise FileNotFoundError(f"{src.uri}: no encoder_state_dict.pt in the downloaded model")
    conf = sorted(d.rglob("model_config.yaml"))
    meta = (yaml.safe_load(conf[0].read_text()) or {}) if conf else {}
    # pretraining registers the EMA teacher (model_config "weights: teacher"); models logged before
    # that carried the student and no "weights" key
    logged = meta.get("weights", "student")
    if logged != src.weights:
        raise ValueError(f"{src.uri} holds the {logged} encoder, not the {src.weights} (encoder.weights); "
                         f"take the {src.weights} from the pretraining checkpoint: encoder.source=checkpoint")
    if not attention:
        attention = meta.get("kwargs", {}).get("attention")
    return _subset(str(sd_files[0]), sensors, attention)


def _flat(groups: dict) -> dict:
    """A checkpoint's grouped ``model`` or an already flat state dict -> flat state dict."""
    return join_state(groups) if all(isinstance(v, dict) for v in groups.values()) else groups


def model_from_state(groups: dict, task: ResolvedTask, attention: str = "tokens") -> FinetuneModel:
    """Rebuild a fine-tuned model from a checkpoint's ``model`` groups alone (the architecture is
    read off the encoder tensors), so evaluation needs neither the pretraining run nor the config's
    encoder source."""
    sd = _flat(groups)
    enc = AnySat.from_official({k[len("net.encoder."):]: v for k, v in sd.items() if k.startswith("net.encoder.")},
                               attention=attention)
    model = build_task_model(enc, task, freeze=False)
    model.load_state_dict(sd, strict=True)
    return model


def load_finetuned(uri: str, storage_options: dict | None, task: ResolvedTask, weights: str = "best") -> dict:
    """A fine-tuning checkpoint (run folder / checkpoint folder / ``state.pt``) ->
    ``{"state": flat state dict, "task", "step", "file", "run_id"}``. ``weights="best"`` takes the
    best-validation weights when the checkpoint recorded them; the task the model was trained for
    (stored beside it) wins over the config's."""
    state_file = find_checkpoint_file(uri, storage_options)
    state = load_checkpoint_state(state_file)
    extra_file = Path(state_file).with_name(FT_STATE_FILE)
    extra = load_checkpoint_state(extra_file) if extra_file.exists() else {}
    if extra.get("task"):
        task = ResolvedTask.model_validate(extra["task"])
    sd, step = join_state(state["model"]), int(state["step"])
    if weights == "best" and extra.get("best_weights"):
        sd, step = extra["best_weights"], int(extra["best"]["step"])
    return {"state": sd, "task": task, "step": step, "file": state_file,
            "run_id": state.get("mlflow_run_id") or None}


# --------------------------------------------------------------------------------------- evaluation
def eval_batches(plan: DataPlan, split: Split, label: str, rank: int, world: int, seed: int,
                 batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """This rank's share of ``split``, every tile once, in store order, the last batch partial.

    Read in-process (no Ray Data): evaluation runs while the training streams' executors are alive,
    and on a small cluster a further Ray Data execution per rank can wait on CPU slots indefinitely;
    validation splits are small and read once, so prefetching buys little."""
    reader = ReadRange(plan, split, False, seed, label=label)
    buf: list[dict[str, np.ndarray]] = []
    n = 0
    for item in stream_items(plan, split, False, rank, world, seed, 0):
        blk = reader.read_item(item)
        if not len(blk["tile"]):
            continue
        buf.append(blk)
        n += len(blk["tile"])
        while n >= batch_size:
            cat = {k: np.concatenate([b[k] for b in buf]) for k in buf[0]}
            yield {k: v[:batch_size] for k, v in cat.items()}
            buf, n = [{k: v[batch_size:] for k, v in cat.items()}], n - batch_size
    if n:
        yield {k: np.concatenate([b[k] for b in buf]) for k in buf[0]}


def targets_from_batch(raw: dict[str, np.ndarray], task: ResolvedTask, device=None) -> torch.Tensor:
    y = torch.from_numpy(np.array(raw["label"]))  # a copy: Ray Data hands out read-only arrays
    y = y.float() if task.kind == "multilabel" else y.long()
    return y.to(device) if device is not None else y


def check_shapes(logits: torch.Tensor, y: torch.Tensor, task: ResolvedTask) -> None:
    """A dense head whose output grid does not match the label is a config error; name the knobs."""
    if task.kind == "segmentation" and tuple(logits.shape[-2:]) != tuple(y.shape[-2:]):
        raise ValueError(f"{task.dataset}: the head predicts {tuple(logits.shape[-2:])} px but label "
                         f"{task.label!r} has {tuple(y.shape[-2:])} px; check task.patch_size_m, "
                         f"task.output_modality, task.proj_size and the crops")


@torch.no_grad()
def run_evaluation(module: FinetuneModel, plan: DataPlan, task: ResolvedTask, split: Split, *, rank: int,
                   world: int, device: torch.device, seed: int, max_batches: int | None = None,
                   use_bf16: bool = False, keep_samples: int = 0, prefix: str = "val", crop: str = "centre",
                   crop_offsets: Sequence[tuple[int, int]] = FLAIR_OFFSETS):
    """Loss and metrics of ``split`` (this rank's share, synced over ranks: a collective).

    ``crop`` (``eval.test_crop``): the window of the sensor cropped in training (``plan.crop``):
    ``centre`` (read that way), ``random`` (one window per tile drawn from (seed, tile)) or ``multi``
    (logits of the windows at ``crop_offsets`` assembled over the whole image,
    :func:`anysat.multicrop.multicrop_logits`; a dense label is then scored whole).

    Returns ``(scalars {prefix/loss, prefix/<metric>, prefix/n_samples}, TaskMetrics, samples)``;
    ``samples`` holds up to ``keep_samples`` (prediction, target, inputs) of this rank, for plots."""
    was_training = module.training
    module.eval()
    metrics = TaskMetrics(task.kind, len(task.classes), task.ignore_index, task.conventions).to(device)
    loss_sum, n_loss, kept = 0.0, 0, []
    cropped = [(k, int(v)) for k, v in plan.crop.items() if v]
    if crop != "centre" and len(cropped) > 1:
        raise ValueError(f"{plan.name}: test_crop={crop} needs one cropped sensor, got {cropped}")
    win = cropped[0] if crop != "centre" and cropped else None
    read_plan = plan.replace(crop={k: v for k, v in plan.crop.items() if win is None or k != win[0]})
    batches = eval_batches(read_plan, split, task.label, rank, world, seed, int(plan.batch_size))
    for i, raw in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        x, pad = collate(raw, read_plan, device)
        y = targets_from_batch(raw, task, device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
            if win is None:
                logits = module(x, pad_mask=pad)
            elif crop == "multi":
                logits = multicrop_logits(lambda xi: module(xi, pad_mask=pad), x, win[0], win[1], crop_offsets)
            else:
                logits, y = _random_windows(module, x, pad, y, raw["tile"], win, seed)
        logits = logits.float()
        check_shapes(logits, y, task)
        loss_sum += float(module.criterion(logits, y)) * len(y)
        n_loss += len(y)
        metrics.update(logits, y)
        if len(kept) < keep_samples:
            pred = torch.sigmoid(logits) > 0.5 if task.kind == "multilabel" else logits.argmax(1)
            for j in range(min(len(y), keep_samples - len(kept))):
                # the images of the kept samples only, not whole batches
                images = {k: v[j].detach().float().cpu() for k, v in x.items() if not k.endswith("_dates")}
                kept.append((pred[j].cpu().numpy(), y[j].cpu().numpy(), images))
    s, n = all_reduce_mean([loss_sum, float(n_loss)], device)
    scores = metrics.compute()  # collective: torchmetrics gathers the statistics of every rank
    out = {f"{prefix}/loss": s / n if n else float("nan")}
    out.update({f"{prefix}/{k}": v for k, v in scores.items()})
    out[f"{prefix}/n_samples"] = n * world
    module.train(was_training)
    return out, metrics, kept


def _random_windows(module, x: dict, pad: dict, y: torch.Tensor, tiles, win: tuple[str, int], seed: int):
    """Logits on one random window per tile (offsets drawn from (seed, tile index), so every run and
    rank scores the same windows); a dense label is cut at the same place."""
    key, size = win
    h, w = x[key].shape[-2:]
    offs = [tuple(int(v) for v in np.random.default_rng([seed, int(t)]).integers(0, [h - size + 1, w - size + 1]))
            for t in tiles]
    logits = module(windows_per_sample(x, key, size, offs), pad_mask=pad)
    if y.dim() == 3:  # a dense label as fine as the image or finer
        r = y.shape[-1] // w
        y = torch.stack([y[i, t * r:(t + size) * r, c * r:(c + size) * r] for i, (t, c) in enumerate(offs)])
    return logits, y
