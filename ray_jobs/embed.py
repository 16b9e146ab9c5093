"""Batch inference over a store with Ray Data: tile / patch embeddings or segmentation maps, written
back as a store of the same format (``pipelines.store``), aligned tile-for-tile with the input.

    python -m ray_jobs.embed --config configs/finetune/<experiment>.yaml [--set key=value ...] \\
        --out <folder | s3://prefix> [--output tile|patch|segmentation] [--splits train,val,test] \\
        [--checkpoint <fine-tuning run | checkpoint | state.pt>] [--encoder-only] [--weights best|last]

The model comes from the fine-tuning checkpoint (default ``<storage_path>/<name>``, best weights), or
with ``--encoder-only`` straight from the config's ``encoder`` section (scratch / pretraining
checkpoint / MLflow / official weights) — embeddings of a pretrained encoder need no fine-tuning.

Pipeline: the training streams' read tasks (:class:`ray_jobs.data.ReadRange`: one shard range per
task, evaluation crops, no temporal dropout) -> ``map_batches`` on an actor pool (:class:`Predictor`,
model loaded once per actor from the object store) -> the driver collects rows per output shard and
writes each shard once it is complete (:func:`pipelines.store.write_block`), so memory holds only
the shards in flight.

Output store ``<out>/<dataset>.zarr``: the input's ``n_tiles``, ``tiles_per_shard``, ``tiles/id`` and
``tiles/split``; tiles of splits not selected keep the fill value. Embeddings are stored as a
single-date "sensor" so any store reader understands them: ``anysat-tile/data`` ``(N, 1, D, 1, 1)``
(resolution = the tile) or ``anysat-patch/data`` ``(N, 1, D, n, n)`` (resolution = the patch size), both
float32; segmentation maps as ``labels/<label>`` ``(N, H, W)`` int16 class indices (-1 = not
predicted), with the task's classes and ignore index in the array attributes. The root attribute
``embedding`` (:class:`pipelines.store.EmbeddingMeta`) describes the model and options.
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

from anysat import AnySat
from pipelines import store as st
from ray_jobs.cli import entrypoint_parser, run_cli, script
from ray_jobs.cluster import check_gpus, init_ray
from ray_jobs.data import ReadRange, collate, quiet_ray_data, stream_items
from ray_jobs.finetune_config import FinetuneConfig, ResolvedTask
from ray_jobs.plan import DataPlan
from ray_jobs.task import load_encoder, load_finetuned, model_from_state, prepare_task

__all__ = ["main", "Predictor"]

OUTPUTS = ("tile", "patch", "segmentation")


class Predictor:
    """Ray Data actor: numpy rows of the read tasks -> ``{"tile", "value"}``."""

    def __init__(self, model_spec: dict, plan: DataPlan, output: str, patch_size_m: int, use_gpu: bool = False):
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

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x, pad = collate(batch, self.plan, self.device)
        with torch.inference_mode():
            if self.output == "segmentation":
                y = self.model(x, pad_mask=pad).argmax(1).to(torch.int16)
            else:
                y = self.encoder(x, patch_size=self.patch, output=self.output, pad_mask=pad).float()
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
    out_url = args.out if args.out.rstrip("/").endswith(".zarr") else st.store_url(args.out, plan.name)
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


def _layout(source: st.StoreMeta, plan: DataPlan, task: ResolvedTask, output: str, first: np.ndarray,
            label: str | None) -> st.StoreLayout:
    """The output store's arrays, sized by the first result block ``first``."""
    sensors, labels = {}, {}
    if output == "segmentation":
        labels[label] = st.LabelLayout(label, "segmentation", list(task.classes), list(first.shape[-2:]), "int16",
                                       ignore_index=None)
    else:
        dim = int(first.shape[1])
        n = 1 if output == "tile" else int(round(plan.tile_m / task.patch_size_m))
        res = plan.tile_m if output == "tile" else float(task.patch_size_m)
        key = f"anysat-{output}"
        sensors[key] = st.SensorLayout(key, 1, dim, n, n, "float32", [f"e{i}" for i in range(dim)], res, False)
    return st.StoreLayout(source.dataset, source.n_tiles, source.tiles_per_shard, sensors, labels)


def _run(job: _Job) -> int:
    args, cfg, plan, task = job.args, job.cfg, job.plan, job.task
    init_ray(log_to_driver=False)
    if cfg.use_gpu:
        check_gpus(args.concurrency, f"use_gpu: true with --concurrency {args.concurrency} inference actor(s)")
    quiet_ray_data()
    t0 = time.perf_counter()
    reader = st.StoreReader(plan.url, plan.storage_options)
    ref = ray.put(job.model_spec)
    plan = plan.replace(batch_size=args.batch_size or plan.batch_size)

    # one dataset over every selected split; each read task keeps one split of one shard range
    parts = []
    for split in job.splits:
        items = stream_items(plan, split, False, 0, 1, cfg.seed, 0)
        ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
        parts.append(ds.map_batches(ReadRange(plan, split, False, cfg.seed), batch_size=1, batch_format="numpy",
                                    num_cpus=cfg.data.read_num_cpus))
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    ds = ds.map_batches(Predictor, fn_constructor_kwargs={"model_spec": {"ref": ref}, "plan": plan,
                                                          "output": args.output,
                                                          "patch_size_m": task.patch_size_m,
                                                          "use_gpu": cfg.use_gpu},
                        batch_size=plan.batch_size, batch_format="numpy", concurrency=args.concurrency,
                        num_cpus=args.num_cpus, num_gpus=1 if cfg.use_gpu else 0)

    # expected tiles per output shard, so a shard is written as soon as all its rows arrived
    expected = dict(enumerate(int(c) for c in plan.shard_counts(job.splits)))
    ids, all_splits, tps = reader.ids(), reader.splits(), plan.tiles_per_shard
    so = cfg.data.storage_options if st.is_remote(job.out_url) else None
    pending: dict[int, list[tuple[int, np.ndarray]]] = {}
    got: dict[int, int] = {}
    root, layout, meta, written = None, None, None, 0
    label = f"{task.label}_pred" if args.output == "segmentation" else None
    for block in ds.iter_batches(batch_size=None, batch_format="numpy"):
        tiles, vals = block["tile"], block["value"]
        if not len(tiles):
            continue
        if root is None:  # the shapes are known from the first result
            layout = _layout(reader.meta, plan, task, args.output, vals, label)
            meta = st.StoreMeta.for_layout(
                layout, task=reader.meta.task, tile_m=plan.tile_m,
                embedding=st.EmbeddingMeta(source_store=plan.url, model=job.description, output=args.output,
                                           patch_size_m=task.patch_size_m, splits=job.splits,
                                           sensors=tuple(plan.sensors)))
            root = st.create_store(job.out_url, layout, meta, so)
        for t, v in zip(tiles, vals):
            s = int(t) // tps
            pending.setdefault(s, []).append((int(t), v))
            got[s] = got.get(s, 0) + 1
            if got[s] == expected[s]:
                written += _write_shard(root, layout, s, pending.pop(s), ids, all_splits, args.output, label)
    for s in [s for s, e in expected.items() if e and s in pending]:  # never happens unless rows went missing
        raise RuntimeError(f"shard {s}: {got.get(s, 0)} of {expected[s]} rows arrived")
    # shards without any selected tile still get their ids/splits
    for s, e in expected.items():
        if e == 0:
            _write_shard(root, layout, s, [], ids, all_splits, args.output, label)
    st.write_meta(job.out_url, meta.replace(status="complete"), so)
    print(f"wrote {written} tiles of {args.output} outputs to {job.out_url} in {time.perf_counter() - t0:.1f} s "
          f"({job.description})")
    return 0


def _write_shard(root, layout: st.StoreLayout, s: int, rows: list[tuple[int, np.ndarray]], ids: np.ndarray,
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
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(_parser(), _prepare, _run, argv)


if __name__ == "__main__":
    script("ray_jobs.embed")
