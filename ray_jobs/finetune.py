"""Fine-tuning (FT) and linear probing (LP) of AnySat on Ray Train (spec §4).

    python -m ray_jobs.finetune --config configs/finetune/<dataset>-<task>-<ft|lp>.yaml [--set key=value ...]

(also as ``ray job submit ... -- python -m ray_jobs.finetune ...``, exactly like ``ray_jobs.pretrain``).

The service is the pretraining service with a different module and loop; everything else is imported
from it: typed config + ``--set`` (``ray_jobs.config``), store plans, Ray Data streams and collate
(``ray_jobs.data``), optimiser / lr schedule / checkpoint format / storage / worker env
(``ray_jobs.train``), MLflow run resolution and the rank-0 tracker (``ray_jobs.tracking``). So a run
resumes from ``storage_path/name`` after a worker crash or a resubmission, into the same MLflow run.

Per worker: encoder (scratch / pretraining checkpoint's EMA teacher / MLflow model / official
weights, :func:`load_encoder`) + head (:mod:`anysat.heads`) -> DDP -> AdamW on the trainable
parameters (LP: the head only; the encoder is frozen, in eval mode, run without autograd) -> every
``train.eval_every`` steps the whole validation split (``val/loss``, ``val/<metric>``; plateau lr,
best weights, early stopping on ``task.monitor``) -> at the end the test split with the best weights
(``test/<metric>``, confusion matrix, prediction grid, per-class table; :mod:`ray_jobs.evaluate`) and
the fine-tuned model as an MLflow artifact.

Labels come from the same streams as the images: ``ray_jobs.data.ReadRange(..., label=)`` /
``StoreStream(..., label=)`` add the ``label`` column to each read and crop segmentation labels with
the very offsets used for the image crops. Split names go through the dataset's aliases (PASTIS-HD
``train`` = fold1-3, ``val`` = fold4, ``test`` = fold5; ``ray_jobs.data.split_aliases``).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ray_jobs.config import (ConfigError, check_stores, entrypoint_parser, load_config, resolve_paths,
                             setup_logging)
from ray_jobs.data import ReadRange, StoreStream, has_split, store_splits
from ray_jobs.finetune_config import FinetuneConfig, ResolvedTask, resolve_task

__all__ = ["main", "fit", "train_loop_per_worker", "load_encoder",
           "build_task_model", "model_from_state", "run_evaluation", "eval_batches", "targets_from_batch",
           "FinetuneModel",
           "FT_STATE_FILE", "find_checkpoint_file", "load_finetuned"]

log = logging.getLogger(__name__)

FT_STATE_FILE = "finetune_state.pt"
"""Beside the pretraining-format ``state.pt``: best weights, best value, early-stopping counters."""


# ============================================================================================ data
def eval_batches(plan: dict, split: str, label: str, rank: int, world: int, seed: int, batch_size: int):
    """This rank's share of ``split``, every tile once, in store order, the last batch partial.

    Read in-process (no Ray Data): evaluation runs while the training streams' executors are alive,
    and on a small cluster a further Ray Data execution per rank can wait on CPU slots indefinitely;
    validation splits are small and read once, so prefetching buys little."""
    from ray_jobs.data import stream_items

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


# =========================================================================================== model
def find_checkpoint_file(uri: str, storage_options: dict | None = None, name: str = "state.pt") -> str:
    """``uri``: a ``state.pt``, a Ray Train checkpoint folder, or a run folder (its latest
    ``checkpoint_*``). Returns a local file path (remote files are downloaded to a temp dir)."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}) if "://" in uri else {})
    if fs.isfile(path):
        target = path
    elif fs.exists(f"{path}/{name}"):
        target = f"{path}/{name}"
    else:
        ckpts = sorted(p for p in fs.glob(f"{path}/checkpoint_*") if fs.exists(f"{p}/{name}"))
        if not ckpts:
            raise FileNotFoundError(f"no {name} under {uri} (expected a checkpoint or a run folder)")
        target = f"{ckpts[-1]}/{name}"
    if "://" not in uri:
        return target
    local = Path(tempfile.mkdtemp(prefix="anysat-ckpt-")) / Path(target).name
    fs.get(target, str(local))
    return str(local)


def _subset(model, sensors: list[str], attention: str | None):
    """The same encoder with only ``sensors``' projectors (spec §4.1); missing ones are an error."""
    from anysat import AnySat

    have = set(model.sensors)
    missing = [s for s in sensors if s not in have]
    if missing:
        raise ValueError(f"the pretrained encoder has no projector for {missing} (it has {sorted(have)})")
    att = attention or model.attention
    sub = AnySat(model.embed_dim, model.depth, model.num_heads, sensors=sensors, attention=att)
    keep = {k: v for k, v in model.state_dict().items()
            if not k.startswith("projector_") or k.split(".")[0][len("projector_"):] in sensors}
    sub.load_state_dict(keep, strict=True)
    return sub


def load_encoder(cfg: FinetuneConfig, sensors: list[str]):
    """The encoder of ``cfg.encoder``, with the projectors of ``sensors`` only."""
    from anysat import AnySat

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
        return _subset(AnySat.from_official(local, attention=attention or "tokens"), sensors, attention)
    if src.source == "checkpoint":
        state = torch.load(find_checkpoint_file(src.uri, cfg.storage_options), map_location="cpu",
                           weights_only=True)
        groups = state["model"]
        # JEPA checkpoint: groups "encoder" (student) and "teacher" (EMATeacher: keys "module.*")
        group = "teacher" if src.weights == "teacher" else "encoder"
        if group not in groups:
            raise ValueError(f"checkpoint {src.uri} has no {group!r} weights (groups: {sorted(groups)})")
        sd = groups[group]
        return _subset(AnySat.from_official(sd, attention=attention or "tokens"), sensors, attention)
    # mlflow: the pretraining service's logged pyfunc model (encoder_state_dict.pt + model_config.yaml)
    import mlflow.artifacts
    import yaml

    uri = src.uri
    if uri.startswith("models:/"):  # resolve against the configured registry, not the process default
        from mlflow import MlflowClient
        from mlflow.store.artifact.utils.models import get_model_name_and_version

        client = MlflowClient(cfg.mlflow.tracking_uri, registry_uri=cfg.mlflow.tracking_uri)
        uri = client.get_model_version_download_uri(*get_model_name_and_version(client, uri))
    d = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=cfg.mlflow.tracking_uri))
    sd_files = sorted(d.rglob("encoder_state_dict.pt"))
    if not sd_files:
        raise FileNotFoundError(f"{src.uri}: no encoder_state_dict.pt in the downloaded model")
    conf = sorted(d.rglob("model_config.yaml"))
    meta = (yaml.safe_load(conf[0].read_text()) or {}) if conf else {}
    # the pretraining service registers the EMA teacher (model_config "weights: teacher"); models
    # logged before that carried the student and no "weights" key
    logged = meta.get("weights", "student")
    if logged != src.weights:
        raise ValueError(f"{src.uri} holds the {logged} encoder, not the {src.weights} (encoder.weights); "
                         f"take the {src.weights} from the pretraining checkpoint: encoder.source=checkpoint")
    if not attention:
        attention = meta.get("kwargs", {}).get("attention")
    return _subset(AnySat.from_official(str(sd_files[0]), attention=attention or "tokens"), sensors, attention)


class FinetuneModel(torch.nn.Module):
    """:class:`anysat.heads.TaskModel` + its loss. ``student_parameters`` (the trainable ones) is
    the name ``ray_jobs.train.build_optimizer`` asks for, so the optimiser is built the same way."""

    def __init__(self, task_model, criterion):
        super().__init__()
        self.net = task_model
        self.criterion = criterion

    @property
    def encoder(self):
        return self.net.encoder

    def forward(self, x, pad_mask=None):
        return self.net(x, pad_mask=pad_mask)

    def student_parameters(self) -> list[torch.nn.Parameter]:
        return self.net.trainable_parameters()


def build_task_model(encoder, task: ResolvedTask, freeze: bool) -> FinetuneModel:
    from anysat.heads import DenseSegmenter, TaskModel, TileClassifier
    from anysat.losses import build_loss

    k = len(task.classes)
    head = (DenseSegmenter(encoder.embed_dim, k, task.proj_size) if task.head == "dense"
            else TileClassifier(encoder.embed_dim, k))
    net = TaskModel(encoder, head, freeze_encoder=freeze, patch_size=task.patch_size_m,
                    output_modality=task.output_modality)
    return FinetuneModel(net, build_loss(task.loss, k))


def model_from_state(groups: dict, task: ResolvedTask, attention: str = "tokens") -> FinetuneModel:
    """Rebuild a fine-tuned model from a checkpoint's ``model`` groups alone (the architecture is
    read off the encoder tensors), so evaluation needs neither the pretraining run nor the config's
    encoder source."""
    from anysat import AnySat

    sd = {k[len("net.encoder."):]: v for k, v in _flat(groups).items() if k.startswith("net.encoder.")}
    enc = AnySat.from_official(sd, attention=attention)
    model = build_task_model(enc, task, freeze=False)
    model.load_state_dict(_flat(groups), strict=True)
    return model


def load_finetuned(uri: str, storage_options: dict | None, task: ResolvedTask, weights: str = "best") -> dict:
    """A fine-tuning checkpoint (run folder / checkpoint folder / ``state.pt``) ->
    ``{"state": flat state dict, "task", "step", "file", "run_id"}``. ``weights="best"`` takes the
    best-validation weights when the checkpoint recorded them; the task the model was trained for
    (stored beside it) wins over the config's."""
    from ray_jobs.train import join_state, load_checkpoint_state

    state_file = find_checkpoint_file(uri, storage_options)
    state = load_checkpoint_state(state_file)
    extra_file = Path(state_file).with_name(FT_STATE_FILE)
    extra = torch.load(extra_file, map_location="cpu", weights_only=True) if extra_file.exists() else {}
    if extra.get("task"):
        task = ResolvedTask.model_validate(extra["task"])
    sd, step = join_state(state["model"]), int(state["step"])
    if weights == "best" and extra.get("best_weights"):
        sd, step = extra["best_weights"], int(extra["best"]["step"])
    return {"state": sd, "task": task, "step": step, "file": state_file,
            "run_id": state.get("mlflow_run_id") or None}


def _flat(groups: dict) -> dict:
    from ray_jobs.train import join_state

    return join_state(groups) if all(isinstance(v, dict) for v in groups.values()) else groups


# ====================================================================================== evaluation
@torch.no_grad()
def run_evaluation(module: FinetuneModel, plan: dict, task: ResolvedTask, split: str, *, rank: int, world: int,
                   device, seed: int, max_batches: int | None = None,
                   use_bf16: bool = False, keep_samples: int = 0, prefix: str = "val"):
    """Loss and metrics of ``split`` (this rank's share, synced over ranks: a collective).

    Returns ``(scalars {prefix/loss, prefix/<metric>}, TaskMetrics, samples)``; ``samples`` holds up
    to ``keep_samples`` (prediction, target) pairs of this rank, for plots."""
    from anysat.metrics import TaskMetrics
    from ray_jobs.data import collate
    from ray_jobs.train import all_reduce_mean

    was_training = module.training
    module.eval()
    metrics = TaskMetrics(task.kind, len(task.classes), task.ignore_index, task.conventions).to(device)
    loss_sum, n_loss, samples = 0.0, 0, []
    batches = eval_batches(plan, split, task.label, rank, world, seed, int(plan["batch_size"]))
    for i, raw in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        x, pad = collate(raw, plan, device)
        y = targets_from_batch(raw, task, device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
            logits = module(x, pad_mask=pad)
        logits = logits.float()
        _check_shapes(logits, y, task)
        loss_sum += float(module.criterion(logits, y)) * len(y)
        n_loss += len(y)
        metrics.update(logits, y)
        if len(samples) < keep_samples:
            pred = torch.sigmoid(logits) > 0.5 if task.kind == "multilabel" else logits.argmax(1)
            for j in range(min(len(y), keep_samples - len(samples))):
                samples.append((pred[j].cpu().numpy(), y[j].cpu().numpy(), x, j))
    s, n = all_reduce_mean([loss_sum, float(n_loss)], device)
    scores = metrics.compute()  # collective: torchmetrics gathers the statistics of every rank
    out = {f"{prefix}/loss": s / n if n else float("nan")}
    out.update({f"{prefix}/{k}": v for k, v in scores.items()})
    out[f"{prefix}/n_samples"] = n * world
    module.train(was_training)
    # keep only the images of the kept samples (not whole batches)
    samples = [(pr, tg, {k: v[j].detach().float().cpu() for k, v in x.items() if not k.endswith("_dates")})
               for pr, tg, x, j in samples]
    return out, metrics, samples


def _check_shapes(logits, y, task: ResolvedTask) -> None:
    if task.kind == "segmentation" and tuple(logits.shape[-2:]) != tuple(y.shape[-2:]):
        raise ValueError(f"{task.dataset}: the head predicts {tuple(logits.shape[-2:])} px but label "
                         f"{task.label!r} has {tuple(y.shape[-2:])} px; check task.patch_size_m, "
                         f"task.output_modality, task.proj_size and the crops")


# ============================================================================================ loop
def train_loop_per_worker(loop_config: dict) -> None:
    import ray.train
    import ray.train.torch

    from ray_jobs.data import collate, preview_figure
    from ray_jobs.schedule import Schedule
    from ray_jobs.tracking import Tracker
    from ray_jobs.train import (CHECKPOINT_FILE, all_reduce_mean, join_state, log_preview, maybe_inject_fault,
                                quiet_ray_data, build_optimizer, build_scheduler, load_checkpoint_state,
                                report_checkpoint, save_checkpoint_state)

    cfg = FinetuneConfig.model_validate(loop_config["config"])
    task = ResolvedTask.model_validate(loop_config["task"])
    plan: dict = loop_config["plan"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    quiet_ray_data()

    torch.manual_seed(cfg.seed)  # identical head init on every rank (DDP broadcasts anyway)
    module = build_task_model(load_encoder(cfg, list(plan["sensors"])), task, cfg.mode == "lp").to(device)
    optimizer = build_optimizer(cfg, module)
    scheduler = build_scheduler(cfg, optimizer)
    # A one-dataset, one-scale schedule: only so the checkpoint has the pretraining format.
    schedule = Schedule(cfg.seed, {plan["name"]: (1.0, (task.patch_size_m,))})
    plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)

    step, consumed, run_id = 0, {plan["name"]: 0}, loop_config.get("run_id")
    best: dict[str, Any] = {"value": -math.inf, "step": -1, "bad": 0, "stopped": False}
    best_weights: dict | None = None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = load_checkpoint_state(Path(d) / CHECKPOINT_FILE)
            extra = torch.load(Path(d) / FT_STATE_FILE, map_location="cpu", weights_only=True)
        module.load_state_dict(join_state(state["model"]))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = int(state["step"])
        consumed.update(state["consumed"])
        run_id = state["mlflow_run_id"] or run_id
        best.update(extra["best"])
        best_weights = extra.get("best_weights") or None
        log.info("rank %d resumed from step %d", rank, step)
    first_step = step
    torch.manual_seed(cfg.seed * 1000003 + rank * 7919 + step)

    if world > 1:
        # find_unused_parameters: e.g. a dense head never uses the combiner's context path
        model = ray.train.torch.prepare_model(module, parallel_strategy_kwargs={"find_unused_parameters": True})
    else:
        model = module

    tracker = Tracker(cfg.mlflow.tracking_uri, run_id, enabled=(rank == 0 and cfg.mlflow.enabled))
    tracker.resume_guard()
    if rank == 0:
        tags = {"ray.world_size": world, "ray.device": str(device), "anysat.mode": cfg.mode,
                "anysat.task": f"{task.dataset}/{task.label}", "anysat.encoder_source": cfg.encoder.source}
        if ckpt is not None:
            tags["anysat.resumed_from_step"] = step
        tracker.set_tags(tags)
        n_train = sum(p.numel() for p in module.student_parameters())
        tracker.log_params({"trainable_parameters": n_train,
                            "total_parameters": sum(p.numel() for p in module.parameters())})

    stream = StoreStream(plan, plan["split"], train=True, rank=rank, world=world, seed=cfg.seed,
                         read_num_cpus=cfg.data.read_num_cpus, prefetch_batches=cfg.data.prefetch_batches,
                         label=task.label)
    it = stream.batches(consumed[plan["name"]])
    use_bf16 = device.type == "cuda" and cfg.train.precision in ("auto", "bf16")
    eval_kw = dict(rank=rank, world=world, device=device, seed=cfg.seed, max_batches=cfg.eval.val_batches,
                   use_bf16=use_bf16)
    win = {"n": 0, "loss": 0.0, "samples": 0, "time": 0.0, "data": 0.0}
    t_window = time.perf_counter()
    previewed = False

    while step < cfg.train.max_steps and not best["stopped"]:
        maybe_inject_fault(cfg, rank, step)
        t0 = time.perf_counter()
        raw = next(it)
        consumed[plan["name"]] += 1
        x, pad = collate(raw, plan, device)
        y = targets_from_batch(raw, task, device)
        t_data = time.perf_counter() - t0
        if rank == 0 and cfg.train.preview and not previewed and tracker.last_step < 0:
            previewed = True
            log_preview(tracker, x, plan, preview_figure)

        model.train()
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
            logits = model(x, pad_mask=pad)
        _check_shapes(logits, y, task)
        loss = module.criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(module.student_parameters(), cfg.train.grad_clip)
        optimizer.step()
        if not plateau:
            scheduler.step()
        step += 1
        win["n"] += 1
        win["loss"] += float(loss.detach())
        win["samples"] += len(y)
        win["time"] += time.perf_counter() - t0
        win["data"] += t_data

        if step % cfg.train.log_every == 0 or step == cfg.train.max_steps:
            mean_loss, data_frac = all_reduce_mean([win["loss"] / win["n"], win["data"] / max(win["time"], 1e-9)],
                                                    device)
            elapsed = time.perf_counter() - t_window
            tracker.log_metrics({"train/loss": mean_loss, "train/lr": optimizer.param_groups[0]["lr"],
                                 "train/samples_per_s": win["samples"] * world / max(elapsed, 1e-9),
                                 "train/data_wait_fraction": data_frac}, step)
            if rank == 0:
                log.info("step %d train/loss %.4f", step, mean_loss)
            win = {"n": 0, "loss": 0.0, "samples": 0, "time": 0.0, "data": 0.0}
            t_window = time.perf_counter()

        evaluated = False
        if (cfg.train.eval_every and plan.get("val_split")
                and (step % cfg.train.eval_every == 0 or step == cfg.train.max_steps)):
            val, _, _ = run_evaluation(module, plan, task, plan["val_split"], prefix="val", **eval_kw)
            evaluated = True
            value = val.get(f"val/{task.monitor}")
            if value is None:
                raise ValueError(f"task.monitor {task.monitor!r} is not a metric of this task "
                                 f"({sorted(k[4:] for k in val)})")
            if value > best["value"]:
                best.update(value=float(value), step=step, bad=0)
                best_weights = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
            else:
                best["bad"] += 1
                if cfg.eval.patience and best["bad"] >= cfg.eval.patience:
                    best["stopped"] = True
                    if rank == 0:
                        log.info("early stopping at step %d (best %s %.4f at step %d)", step, task.monitor,
                                 best["value"], best["step"])
            val[f"val/best_{task.monitor}"] = best["value"]
            tracker.log_metrics(val, step)
            if plateau:
                scheduler.step(val["val/loss"])
            t_window = time.perf_counter()

        if step % cfg.checkpoint.every == 0 or step == cfg.train.max_steps or best["stopped"] or (
                evaluated and best["step"] == step and cfg.eval.restore_best):
            def write(d: Path) -> None:
                save_checkpoint_state(d / CHECKPOINT_FILE, module, optimizer, scheduler, step, schedule, consumed,
                                      run_id, cfg)
                torch.save({"best": dict(best), "best_weights": best_weights or {}, "task": task.model_dump()},
                           d / FT_STATE_FILE)

            report_checkpoint({"step": step, "loss": float(loss.detach())}, rank, write)
            t_window = time.perf_counter()

    if step > first_step:  # a finished run resubmitted evaluates and logs nothing new
        if cfg.eval.restore_best and best_weights:
            module.load_state_dict(best_weights)
        if rank == 0:
            tracker.log_metrics({"best_step": best["step"]}, step)
        if has_split(plan, cfg.eval.test_split):
            from ray_jobs.evaluate import log_evaluation

            test, metrics, samples = run_evaluation(module, plan, task, cfg.eval.test_split, prefix="test",
                                                    keep_samples=8 if rank == 0 else 0,
                                                    **{**eval_kw, "max_batches": None})
            stats, per_class = metrics.statistics(), metrics.per_class()  # collectives: every rank
            if rank == 0:
                tracker.log_metrics(test, step)
                if cfg.eval.plots:
                    log_evaluation(tracker, task, "test", stats, per_class, samples, test)
                log.info("test: %s", {k: round(v, 4) for k, v in test.items()})
        if rank == 0 and cfg.mlflow.log_model:
            _log_model(tracker, module, task, cfg)
    if rank == 0:
        tracker.finish("FINISHED")


def _log_model(tracker, module: FinetuneModel, task: ResolvedTask, cfg: FinetuneConfig) -> None:
    """The fine-tuned model (encoder + head) as plain tensors + the resolved task, under ``model/``."""
    import yaml

    if not tracker.enabled:
        return
    with tempfile.TemporaryDirectory() as d:
        torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, Path(d) / "model_state_dict.pt")
        (Path(d) / "task.yaml").write_text(yaml.safe_dump({
            "task": task.model_dump(), "mode": cfg.mode, "attention": module.encoder.attention,
            "sensors": list(module.encoder.sensors)}))
        tracker.client.log_artifacts(tracker.run_id, d, "model")


# ========================================================================================== driver
def fit(cfg: FinetuneConfig, plan: dict, task: ResolvedTask, run_id: str | None):
    """Run the fine-tuning loop on a TorchTrainer (the pretraining service's trainer settings)."""
    from ray_jobs.train import run_trainer

    return run_trainer(cfg, train_loop_per_worker, {"config": cfg.model_dump(mode="json"), "plan": plan,
                                                    "task": task.model_dump(), "run_id": run_id})


def prepare(config: str, overrides: list[str]) -> tuple[FinetuneConfig, dict, ResolvedTask, list[str]]:
    """Config -> (absolute-path config, data plan, resolved task, usable split names: the store's
    splits and the dataset's aliases of them). Raises ConfigError / ValueError / FileNotFoundError
    with the problem named."""
    from ray_jobs.data import resolve_plans

    cfg = resolve_paths(load_config(config, overrides, cls=FinetuneConfig))
    if cfg.encoder.uri and cfg.encoder.source in ("checkpoint", "official") and "://" not in cfg.encoder.uri:
        cfg.encoder.uri = str(Path(cfg.encoder.uri).expanduser().resolve())
    check_stores(cfg)
    plan = resolve_plans(cfg)[cfg.dataset.name]
    task = resolve_task(cfg, plan)
    from pipelines.store import StoreReader

    reader = StoreReader(plan["url"], plan["storage_options"])
    if task.label not in reader.label_names:
        raise ConfigError(f"store {plan['url']} has no label {task.label!r} (labels: {reader.label_names})")
    return cfg, plan, task, sorted(plan["split_aliases"])


def _split_desc(plan: dict, split) -> str:
    """``train`` / ``train (fold1+fold2+fold3)``: a split as configured and what it reads."""
    if split is None:
        return "none"
    names = store_splits(plan, split)
    if not isinstance(split, str) or [split] == names:
        return "+".join(names)
    return f"{split} ({'+'.join(names)})"


def parse_args(argv=None) -> argparse.Namespace:
    p = entrypoint_parser("python -m ray_jobs.finetune", __doc__, "YAML config (configs/finetune/*.yaml)")
    p.add_argument("--dry-run", action="store_true", help="validate config and store, print the plan, exit")
    return p.parse_args(argv)


def main(argv=None) -> int:
    setup_logging()
    args = parse_args(argv)
    try:
        cfg, plan, task, splits = prepare(args.config, args.overrides)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{cfg.mode.upper()} {task.dataset}/{task.label} ({task.kind}, {len(task.classes)} classes): "
          f"{plan['n_split']} {_split_desc(plan, plan['split'])} tiles, val {_split_desc(plan, plan['val_split'])}, "
          f"test {_split_desc(plan, cfg.eval.test_split)}, "
          f"batch {plan['batch_size']} x {cfg.num_workers} workers, patch {task.patch_size_m} m, head {task.head}, "
          f"loss {task.loss}, monitor val/{task.monitor}; "
          f"encoder {cfg.encoder.source} {cfg.encoder.uri or cfg.model.size}")
    print(f"storage: {cfg.storage_path}/{cfg.name}   mlflow: {cfg.mlflow.tracking_uri} "
          f"(experiment {cfg.mlflow.experiment})")
    if args.dry_run:
        return 0

    from ray_jobs.data import store_versions
    from ray_jobs.train import drive

    extra = {**store_versions({plan["name"]: plan}), **{f"task.resolved.{k}": v for k, v in task.model_dump().items()
                                                        if k != "classes"}}
    return drive(cfg, extra, lambda run_id: fit(cfg, plan, task, run_id), "fine-tuning")


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # Run the importable module's main, not __main__'s: Ray pickles functions and classes of __main__
    # by value (and the train loop's closure does not pickle), those of a module by reference.
    from ray_jobs.finetune import main as _main

    sys.exit(_main())
