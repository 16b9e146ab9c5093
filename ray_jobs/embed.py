"""Batch inference over a store with Ray Data: tile / patch embeddings or segmentation maps, written
back as a store of the same format (``pipelines.store``), aligned tile-for-tile with the input.

    python -m ray_jobs.embed --config configs/finetune/<experiment>.yaml [--set key=value ...] \\
        --out <folder | s3://prefix> [--output tile|patch|dense|segmentation] [--splits train,val,test] \\
        [--checkpoint <fine-tuning run | checkpoint | state.pt>] [--encoder-only] [--weights best|last] [--no-mlflow]

The model comes from the fine-tuning checkpoint (default ``<storage_path>/<name>``, best weights), or
with ``--encoder-only`` straight from the config's ``encoder`` section (scratch / pretraining
checkpoint / MLflow / official weights) — embeddings of a pretrained encoder need no fine-tuning.

Pipeline: one Ray Data row per store shard -> an actor pool (:class:`ShardEmbedder`, model loaded
once per actor from the object store) that reads the shard with the training streams' reader
(:class:`ray_jobs.data.ReadRange`: evaluation crops, no temporal dropout), runs it in batches and
writes the output shard itself (:func:`pipelines.store.write_block`): every actor writes in
parallel, the driver only counts, and memory holds one shard per actor. The actor reads its own
shard so that no block boundary can split a shard between two writers. The run (model, store,
output, tiles/s) is logged to MLflow (experiment ``anysat-inference``) unless ``--no-mlflow``.

Output store ``<out>/<dataset>.zarr``: the input's ``n_tiles``, ``tiles_per_shard``, ``tiles/id`` and
``tiles/split``; tiles of splits not selected keep the fill value. Embeddings are stored as a
single-date "sensor" so any store reader understands them: ``anysat-tile/data`` ``(N, 1, D, 1, 1)``
(resolution = the tile), ``anysat-patch/data`` ``(N, 1, D, n, n)`` (resolution = the patch size) or
``anysat-dense/data`` ``(N, 1, 2D, m, m)`` (dense features of the first sensor, or the task's
``output_modality``: patch token ‖ sub-patch feature per sub-patch), all float32; segmentation maps
as ``labels/<label>`` ``(N, H, W)`` int16 class indices (-1 = not predicted), with the task's classes and ignore index in the array attributes. The root attribute
``embedding`` (:class:`pipelines.store_meta.EmbeddingMeta`) describes the model and options.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import ray
import ray.data
import torch
import zarr
from tqdm import tqdm

from anysat import AnySat
from pipelines import store as st
from pipelines.storage import is_remote, store_url, zarr_store
from pipelines.store_layout import LabelLayout, SensorLayout, StoreLayout
from pipelines.store_meta import EmbeddingMeta, StoreMeta, write_meta
from ray_jobs.cli import entrypoint_parser, run_cli, script
from ray_jobs.cluster import check_gpus, init_ray
from ray_jobs.data import ReadRange, collate, quiet_ray_data, stream_items
from ray_jobs.finetune_config import FinetuneConfig, ResolvedTask
from ray_jobs.inference_log import log_inference
from ray_jobs.plan import DataPlan
from ray_jobs.task import load_encoder, load_finetuned, model_from_state, prepare_task

__all__ = ["main", "Predictor", "ShardEmbedder"]

OUTPUTS = ("tile", "patch", "dense", "segmentation")


class Predictor:
    """Ray Data actor: numpy rows of the read tasks -> ``{"tile", "value"}``."""

    def __init__(self, model_spec: dict, plan: DataPlan, output: str, patch_size_m: int, use_gpu: bool = False,
                 dense_modality: str | None = None):
        spec = ray.get(model_spec["ref"]) if "ref" in model_spec else model_spec
        attention = spec.get("attention") or "tokens"
        if spec["kind"] == "finetuned":
            self.model = model_from_state(spec["state"], ResolvedTask.model_validate(spec["task"]), attention)
            self.encoder = self.model.encoder
        else:
            self.model = None
            self.encoder = AnySat.from_official(spec["state"], attention=attention)
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        for m in (self.model, self.encoder):
            if m is not None:
                m.to(self.device).eval()
        self.plan, self.output, self.patch = plan, output, int(patch_size_m)
        self.dense_modality = dense_modality

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x, pad = collate(batch, self.plan, self.device)
        with torch.inference_mode():
            if self.output == "segmentation":
                y = self.model(x, pad_mask=pad).argmax(1).to(torch.int16)
            else:
                y = self.encoder(x, patch_size=self.patch, output=self.output, pad_mask=pad,
                                 output_modality=self.dense_modality).float()
                y = y[:, :, None, None] if self.output == "tile" else y.permute(0, 3, 1, 2)  # (B, D, n, n)
        return {"tile": batch["tile"], "value": y.cpu().numpy()}


@dataclass(frozen=True)
class _Job:
    args: argparse.Namespace
    cfg: FinetuneConfig
    plan: DataPlan
    task: ResolvedTask
    """The checkpoint's task for a fine-tuned model, else the config's."""
    splits: tuple[str, ...]
    """Stored splits to run on."""
    model_spec: dict
    description: str
    out_url: str


def _model_spec(args: argparse.Namespace, cfg: FinetuneConfig, plan: DataPlan,
                task: ResolvedTask) -> tuple[dict, str]:
    """(model spec for the actors, description). Loads the weights once, in the driver."""
    attention = cfg.encoder.attention or cfg.model.kwargs.get("attention")
    if args.encoder_only:
        torch.manual_seed(cfg.seed)  # a scratch encoder is then the same one the fine-tuning job starts from
        enc = load_encoder(cfg, list(plan.sensors))
        return ({"kind": "encoder", "state": enc.state_dict(), "attention": attention or enc.attention},
                f"encoder {cfg.encoder.source} {cfg.encoder.uri or cfg.model.size}")
    ck = load_finetuned(args.checkpoint or f"{cfg.storage_path.rstrip('/')}/{cfg.name}", cfg.storage_options,
                        task, args.weights)
    return ({"kind": "finetuned", "state": ck["state"], "task": ck["task"].model_dump(), "attention": attention},
            f"fine-tuned {ck['file']} ({args.weights} weights, step {ck['step']})")


def _prepare(args: argparse.Namespace) -> _Job:
    cfg, plan, task = prepare_task(args.config, args.overrides)
    splits = args.splits.split(",") if args.splits else plan.stored_splits
    bad = [s for s in splits if not plan.has_split(s)]
    if bad:
        raise ValueError(f"splits {bad} not in the store (splits: {sorted(plan.split_aliases)})")
    # aliases (PASTIS-HD train = fold1-3) -> the stored splits, each once
    stored = tuple(dict.fromkeys(n for s in splits for n in plan.resolve_split(s)))
    out_url = args.out if args.out.rstrip("/").endswith(".zarr") else store_url(args.out, plan.name)
    if out_url.rstrip("/") == plan.url.rstrip("/"):
        raise ValueError("--out would overwrite the input store")
    spec, desc = _model_spec(args, cfg, plan, task)
    if args.output == "segmentation" and spec["kind"] != "finetuned":
        raise ValueError("--output segmentation needs a fine-tuned checkpoint (not --encoder-only)")
    if spec["kind"] == "finetuned":
        task = ResolvedTask.model_validate(spec["task"])
        if args.output == "segmentation" and task.kind != "segmentation":
            raise ValueError(f"the checkpoint's task is {task.kind}, not segmentation")
    if not plan.shard_counts(stored).any():
        raise ValueError(f"no tiles in splits {list(stored)}")
    return _Job(args, cfg, plan, task, stored, spec, desc, out_url)


def _layout(source: StoreMeta, plan: DataPlan, task: ResolvedTask, output: str, first: np.ndarray,
            label: str | None) -> StoreLayout:
    """The output store's arrays, sized by the first result block ``first``."""
    sensors, labels = {}, {}
    if output == "segmentation":
        labels[label] = LabelLayout(label, "segmentation", list(task.classes), list(first.shape[-2:]), "int16",
                                    ignore_index=None)
    else:
        dim, n = int(first.shape[1]), int(first.shape[-1])  # dense: n = patches x sub-patches per side
        res = plan.tile_m / n
        key = f"anysat-{output}"
        sensors[key] = SensorLayout(key, 1, dim, n, n, "float32", [f"e{i}" for i in range(dim)], res, False)
    return StoreLayout(source.dataset, source.n_tiles, source.tiles_per_shard, sensors, labels)


class ShardEmbedder:
    """Ray Data actor: store shard ranges -> read, predicted in batches, written as output shards."""

    def __init__(self, model_spec: dict, plan: DataPlan, output: str, patch_size_m: int, splits: tuple[str, ...],
                 seed: int, out_url: str, storage_options: dict | None, layout: StoreLayout, label: str | None,
                 use_gpu: bool = False, dense_modality: str | None = None):
        self.predict = Predictor(model_spec, plan, output, patch_size_m, use_gpu, dense_modality)
        self.read = ReadRange(plan, splits, False, seed)
        src = st.StoreReader(plan.url, plan.storage_options)
        self.ids, self.splits = src.ids(), src.splits()
        self.root = zarr.open_group(zarr_store(out_url, storage_options), mode="r+", zarr_format=3)
        self.plan, self.output, self.layout, self.label = plan, output, layout, label

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shards, written = [], []
        for j in range(len(batch["start"])):
            item = {k: int(v[j]) for k, v in batch.items()}
            block = self.read.read_item(item)
            rows: list[tuple[int, np.ndarray]] = []
            for b in range(0, len(block["tile"]), self.plan.batch_size):
                y = self.predict({k: v[b:b + self.plan.batch_size] for k, v in block.items()})
                rows += [(int(t), v) for t, v in zip(y["tile"], y["value"])]
            s = item["start"] // self.plan.tiles_per_shard
            written.append(_write_shard(self.root, self.layout, s, rows, self.ids, self.splits, self.output,
                                        self.label))
            shards.append(s)
        return {"shard": np.array(shards), "tiles": np.array(written)}


def _first_output(job: _Job, plan: DataPlan, dense: str | None) -> np.ndarray:
    """The output of one tile, computed in the driver: the output store's shapes."""
    read = ReadRange(plan, job.splits, False, job.cfg.seed)
    for item in stream_items(plan, job.splits, False, 0, 1, job.cfg.seed, 0):
        block = read.read_item(item)
        if len(block["tile"]):
            probe = Predictor(job.model_spec, plan, job.args.output, job.task.patch_size_m, False, dense)
            return probe({k: v[:1] for k, v in block.items()})["value"]
    raise ValueError(f"no tiles in splits {list(job.splits)}")


def _run(job: _Job) -> int:
    args, cfg, plan, task = job.args, job.cfg, job.plan, job.task
    init_ray(log_to_driver=False)
    if cfg.use_gpu:
        check_gpus(args.concurrency, f"use_gpu: true with --concurrency {args.concurrency} inference actor(s)")
    quiet_ray_data()
    t0 = time.perf_counter()
    reader = st.StoreReader(plan.url, plan.storage_options)
    plan = plan.replace(batch_size=args.batch_size or plan.batch_size)
    dense = (task.output_modality or next(k for k, s in plan.sensors.items() if not s.context)) \
        if args.output == "dense" else None
    label = f"{task.label}_pred" if args.output == "segmentation" else None
    layout = _layout(reader.meta, plan, task, args.output, _first_output(job, plan, dense), label)
    meta = StoreMeta.for_layout(
        layout, task=reader.meta.task, tile_m=plan.tile_m,
        embedding=EmbeddingMeta(source_store=plan.url, model=job.description, output=args.output,
                                patch_size_m=task.patch_size_m, splits=job.splits, sensors=tuple(plan.sensors)))
    so = cfg.data.storage_options if is_remote(job.out_url) else None
    st.create_store(job.out_url, layout, meta, so)

    # every store shard, with or without selected tiles (those still get their ids and splits)
    items = stream_items(plan, job.splits, False, 0, 1, cfg.seed, 0)
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    ds = ds.map_batches(ShardEmbedder, fn_constructor_kwargs={
        "model_spec": {"ref": ray.put(job.model_spec)}, "plan": plan, "output": args.output,
        "patch_size_m": task.patch_size_m, "splits": job.splits, "seed": cfg.seed, "out_url": job.out_url,
        "storage_options": so, "layout": layout, "label": label, "use_gpu": cfg.use_gpu, "dense_modality": dense},
        batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=args.concurrency),
        num_cpus=args.num_cpus, num_gpus=1 if cfg.use_gpu else 0)
    expected = int(plan.shard_counts(job.splits).sum())
    written, shards = 0, 0
    with tqdm(total=expected, unit="tile", desc="tiles", disable=args.no_progress) as bar:
        for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
            written += int(b["tiles"].sum())
            shards += len(b["shard"])
            bar.update(int(b["tiles"].sum()))
    if written != expected or shards != len(items):  # never happens unless rows went missing
        raise RuntimeError(f"{written} of {expected} tiles in {shards} of {len(items)} shards were written")
    write_meta(job.out_url, meta.replace(status="complete"), so)
    dt = time.perf_counter() - t0
    print(f"wrote {written} tiles of {args.output} outputs to {job.out_url} in {dt:.1f} s ({job.description})")
    if not args.no_mlflow and cfg.mlflow.enabled:
        run_id = log_inference(cfg.mlflow.tracking_uri, "anysat-inference", f"embed-{cfg.name}",
                               {"job": "embed", "model": job.description, "store": plan.url, "out": job.out_url,
                                "output": args.output, "splits": ",".join(job.splits), "config": args.config,
                                "concurrency": args.concurrency, "batch_size": plan.batch_size},
                               {"tiles": written, "seconds": dt, "tiles_per_s": written / max(dt, 1e-9)},
                               {"anysat.output": job.out_url})
        print(f"logged to MLflow run {run_id}")
    return 0


def _write_shard(root, layout: StoreLayout, s: int, rows: list[tuple[int, np.ndarray]], ids: np.ndarray,
                 splits: np.ndarray, output: str, label: str | None) -> int:
    lo, hi = layout.shard_range(s)
    block = st.empty_block(layout, hi - lo)
    block["tiles/id"][:] = ids[lo:hi]
    block["tiles/split"][:] = splits[lo:hi]
    for t, v in rows:
        if output == "segmentation":
            block[f"labels/{label}"][t - lo] = v
        else:
            key = f"anysat-{output}"
            block[f"{key}/data"][t - lo, 0] = v
            block[f"{key}/dates"][t - lo] = 0  # one "date": the embedding is time-aggregated
    st.write_block(root, lo, block)
    return len(rows)


def _positive(kind: type) -> Callable[[str], int | float]:
    """argparse type: a number > 0 (0 or a negative count is a mistake, never "the default")."""
    def parse(text: str) -> int | float:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__} > 0, got {text!r}") from None
        if not v > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return v

    return parse


def _parser() -> argparse.ArgumentParser:
    p = entrypoint_parser("python -m ray_jobs.embed", __doc__, "fine-tuning config (data, encoder, task, storage)")
    p.add_argument("--out", required=True,
                   help="output folder / s3:// prefix (writes <out>/<dataset>.zarr) or a .zarr URL")
    p.add_argument("--output", choices=OUTPUTS, default="tile")
    p.add_argument("--splits", default=None, help="comma-separated splits (default: every split of the store)")
    p.add_argument("--checkpoint", default=None, help="fine-tuning run / checkpoint / state.pt "
                                                      "(default <storage_path>/<name>)")
    p.add_argument("--encoder-only", action="store_true", help="use the config's encoder source, no fine-tuning")
    p.add_argument("--weights", choices=("best", "last"), default="best")
    p.add_argument("--batch-size", type=_positive(int), default=None)
    p.add_argument("--concurrency", type=_positive(int), default=1, help="inference actors")
    p.add_argument("--num-cpus", type=_positive(float), default=1.0, help="CPUs per inference actor")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the run to MLflow")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(_parser(), _prepare, _run, argv)


if __name__ == "__main__":
    script("ray_jobs.embed")
