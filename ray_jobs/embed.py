"""Batch inference over a store with Ray Data: tile / patch embeddings or segmentation maps, written
back as a store of the same format (``pipelines.store``), aligned tile-for-tile with the input.

    python -m ray_jobs.embed --config configs/finetune/<experiment>.yaml [--set key=value ...] \\
        --out <folder | s3://prefix> [--output tile|patch|segmentation] [--splits train,val,test] \\
        [--checkpoint <fine-tuning run | checkpoint | state.pt>] [--encoder-only] [--weights best|last]

The model comes from the fine-tuning checkpoint (default ``<storage_path>/<name>``, best weights), or
with ``--encoder-only`` straight from the config's ``encoder`` section (scratch / pretraining
checkpoint / MLflow / official weights) — embeddings of a pretrained encoder need no fine-tuning.

Pipeline: the training service's read tasks (:class:`ray_jobs.data.ReadRange`: one shard range per
task, evaluation crops, no temporal dropout) -> ``map_batches`` on an actor pool (:class:`Predictor`,
model loaded once per actor from the object store) -> the driver collects rows per output shard and
writes each shard once it is complete (:func:`pipelines.store.write_block`), so memory holds only
the shards in flight.

Output store ``<out>/<dataset>.zarr``: the input's ``n_tiles``, ``tiles_per_shard``, ``tiles/id`` and
``tiles/split``; tiles of splits not selected keep the fill value. Embeddings are stored as a
single-date "sensor" so any store reader understands them: ``anysat-tile/data`` ``(N, 1, D, 1, 1)``
(resolution = the tile) or ``anysat-patch/data`` ``(N, 1, D, n, n)`` (resolution = the patch size), both
float32; segmentation maps as ``labels/<label>`` ``(N, H, W)`` int16 class indices (-1 = not
predicted), with the task's classes and ignore index in the array attributes. Root attrs ``embedding``
describe the model and options.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ray_jobs.config import entrypoint_parser, setup_logging

__all__ = ["main", "Predictor", "run_embed"]

log = logging.getLogger(__name__)

OUTPUTS = ("tile", "patch", "segmentation")


class Predictor:
    """Ray Data actor: numpy rows of the read tasks -> ``{"tile", "value"}``."""

    def __init__(self, model_spec: dict, plan: dict, output: str, patch_size_m: int, use_gpu: bool = False):
        import ray

        from anysat import AnySat
        from ray_jobs.finetune import model_from_state
        from ray_jobs.finetune_config import ResolvedTask

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
        from ray_jobs.data import collate

        x, pad = collate(batch, self.plan, self.device)
        with torch.inference_mode():
            if self.output == "segmentation":
                y = self.model(x, pad_mask=pad).argmax(1).to(torch.int16)
            else:
                y = self.encoder(x, patch_size=self.patch, output=self.output, pad_mask=pad).float()
                y = y[:, :, None, None] if self.output == "tile" else y.permute(0, 3, 1, 2)  # (B, D, n, n)
        return {"tile": batch["tile"], "value": y.cpu().numpy()}


def _model_spec(args, cfg, plan, task) -> tuple[dict, str]:
    """(model spec for the actors, description). Loads the weights once, in the driver."""
    from ray_jobs.finetune import load_encoder, load_finetuned

    attention = cfg.encoder.attention or cfg.model.kwargs.get("attention")
    if args.encoder_only:
        torch.manual_seed(cfg.seed)  # a scratch encoder is then the same one the fine-tuning job starts from
        enc = load_encoder(cfg, list(plan["sensors"]))
        return ({"kind": "encoder", "state": enc.state_dict(), "attention": attention or enc.attention},
                f"encoder {cfg.encoder.source} {cfg.encoder.uri or cfg.model.size}")
    ck = load_finetuned(args.checkpoint or f"{cfg.storage_path.rstrip('/')}/{cfg.name}", cfg.storage_options,
                        task, args.weights)
    sd, task, step, state_file = ck["state"], ck["task"], ck["step"], ck["file"]
    return ({"kind": "finetuned", "state": sd, "task": task.model_dump(), "attention": attention},
            f"fine-tuned {state_file} ({args.weights} weights, step {step})")


def _layout(reader, plan, task, output: str, dim: int | None, hw: tuple[int, int] | None, label: str):
    from pipelines.store import LabelLayout, SensorLayout, StoreLayout

    sensors, labels = {}, {}
    if output == "segmentation":
        labels[label] = LabelLayout(label, "segmentation", list(task.classes), list(hw), "int16", ignore_index=None)
    else:
        n = 1 if output == "tile" else int(round(plan["tile_m"] / task.patch_size_m))
        res = plan["tile_m"] if output == "tile" else float(task.patch_size_m)
        key = f"anysat-{output}"
        sensors[key] = SensorLayout(key, 1, dim, n, n, "float32", [f"e{i}" for i in range(dim)], res, False)
    return StoreLayout(reader.dataset, len(reader), reader.tiles_per_shard, sensors, labels)


def run_embed(args, cfg, plan, task, splits: list[str]) -> dict[str, Any]:
    import ray

    from pipelines import store as st
    from ray_jobs.data import ReadRange, stream_items
    from ray_jobs.train import quiet_ray_data

    quiet_ray_data()
    reader = st.StoreReader(plan["url"], plan["storage_options"])
    out_url = args.out if args.out.rstrip("/").endswith(".zarr") else st.store_url(args.out, reader.dataset)
    if out_url.rstrip("/") == plan["url"].rstrip("/"):
        raise ValueError("--out would overwrite the input store")
    spec, desc = _model_spec(args, cfg, plan, task)
    if args.output == "segmentation" and spec["kind"] != "finetuned":
        raise ValueError("--output segmentation needs a fine-tuned checkpoint (not --encoder-only)")
    if spec["kind"] == "finetuned":
        from ray_jobs.finetune_config import ResolvedTask

        task = ResolvedTask.model_validate(spec["task"])
        if args.output == "segmentation" and task.kind != "segmentation":
            raise ValueError(f"the checkpoint's task is {task.kind}, not segmentation")
    ref = ray.put(spec)
    plan = dict(plan, batch_size=args.batch_size or plan["batch_size"])

    # one dataset over every selected split; each read task keeps one split of one shard range
    parts = []
    for split in splits:
        items = stream_items(plan, split, False, 0, 1, cfg.seed, 0)
        ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
        parts.append(ds.map_batches(ReadRange(plan, split, False, cfg.seed), batch_size=1, batch_format="numpy",
                                    num_cpus=cfg.data.read_num_cpus))
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    ds = ds.map_batches(Predictor, fn_constructor_kwargs={"model_spec": {"ref": ref}, "plan": plan,
                                                          "output": args.output,
                                                          "patch_size_m": task.patch_size_m,
                                                          "use_gpu": cfg.use_gpu},
                        batch_size=plan["batch_size"], batch_format="numpy", concurrency=args.concurrency,
                        num_cpus=args.num_cpus, num_gpus=1 if cfg.use_gpu else 0)

    # expected tiles per output shard, so a shard is written as soon as all its rows arrived
    all_splits = reader.splits()
    wanted = np.isin(all_splits, splits)
    tps, n = reader.tiles_per_shard, len(reader)
    expected = {s: int(wanted[s * tps:min(n, (s + 1) * tps)].sum()) for s in range((n + tps - 1) // tps)}
    pending: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    got: dict[int, int] = {}
    ids = reader.ids()
    root, layout, written, t0 = None, None, 0, time.perf_counter()
    label = f"{task.label}_pred" if args.output == "segmentation" else None
    for block in ds.iter_batches(batch_size=None, batch_format="numpy"):
        tiles, vals = block["tile"], block["value"]
        if not len(tiles):
            continue
        if root is None:  # the shapes are known from the first result
            dim = int(vals.shape[1]) if args.output != "segmentation" else None
            hw = tuple(vals.shape[-2:]) if args.output == "segmentation" else None
            layout = _layout(reader, plan, task, args.output, dim, hw, label)
            attrs = {"format": st.FORMAT, "format_version": st.FORMAT_VERSION, "dataset": reader.dataset,
                     "task": reader.attrs.get("task"), "tile_m": plan["tile_m"], "n_tiles": n,
                     "tiles_per_shard": tps, "n_shards": layout.n_shards, "status": "incomplete",
                     "sensors": {k: {"bands": v.bands, "resolution_m": v.resolution_m, "time_series": False,
                                     "t_max": 1, "channels": v.channels, "height": v.height, "width": v.width,
                                     "dtype": v.dtype, "mask_channels": None} for k, v in layout.sensors.items()},
                     "labels": {k: {"task": v.task, "classes": v.classes, "ignore_index": v.ignore_index,
                                    "shape": v.shape, "dtype": v.dtype} for k, v in layout.labels.items()},
                     "embedding": {"source_store": plan["url"], "model": desc, "output": args.output,
                                   "patch_size_m": task.patch_size_m, "splits": list(splits),
                                   "sensors": list(plan["sensors"])}}
            root = st.create_store(out_url, layout, attrs, cfg.data.storage_options if st.is_remote(out_url) else None)
        for t, v in zip(tiles, vals):
            s = int(t) // tps
            pending.setdefault(s, []).append((int(t), v))
            got[s] = got.get(s, 0) + 1
            if got[s] == expected[s]:
                written += _write_shard(root, layout, s, pending.pop(s), ids, all_splits, args.output, label)
    for s in [s for s, e in expected.items() if e and s in pending]:  # never happens unless rows went missing
        raise RuntimeError(f"shard {s}: {got.get(s, 0)} of {expected[s]} rows arrived")
    if root is None:
        raise ValueError(f"no tiles in splits {splits}")
    # shards without any selected tile still get their ids/splits
    for s, e in expected.items():
        if e == 0:
            _write_shard(root, layout, s, [], ids, all_splits, args.output, label)
    root.attrs.update({"status": "complete"})
    return {"url": out_url, "tiles": written, "seconds": time.perf_counter() - t0, "model": desc}


def _write_shard(root, layout, s: int, rows, ids, splits, output: str, label: str | None) -> int:
    from pipelines import store as st

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


def parse_args(argv=None) -> argparse.Namespace:
    p = entrypoint_parser("python -m ray_jobs.embed", __doc__, "fine-tuning config (data, encoder, task, storage)")
    p.add_argument("--out", required=True,
                   help="output folder / s3:// prefix (writes <out>/<dataset>.zarr) or a .zarr URL")
    p.add_argument("--output", choices=OUTPUTS, default="tile")
    p.add_argument("--splits", default=None, help="comma-separated splits (default: every split of the store)")
    p.add_argument("--checkpoint", default=None, help="fine-tuning run / checkpoint / state.pt "
                                                      "(default <storage_path>/<name>)")
    p.add_argument("--encoder-only", action="store_true", help="use the config's encoder source, no fine-tuning")
    p.add_argument("--weights", choices=("best", "last"), default="best")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--concurrency", type=int, default=1, help="inference actors")
    p.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per inference actor")
    return p.parse_args(argv)


def main(argv=None) -> int:
    setup_logging()
    args = parse_args(argv)
    from ray_jobs.config import ConfigError
    from ray_jobs.data import has_split, store_splits
    from ray_jobs.finetune import prepare

    try:
        cfg, plan, task, known = prepare(args.config, args.overrides)
        splits = args.splits.split(",") if args.splits else plan["store_splits"]
        bad = [s for s in splits if not has_split(plan, s)]
        if bad:
            raise ValueError(f"splits {bad} not in the store (splits: {known})")
        # aliases (PASTIS-HD train = fold1-3) -> the stored splits, each once
        splits = list(dict.fromkeys(n for s in splits for n in store_splits(plan, s)))
        import ray

        if not ray.is_initialized():
            ray.init(log_to_driver=False)
        res = run_embed(args, cfg, plan, task, splits)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {res['tiles']} tiles of {args.output} outputs to {res['url']} in {res['seconds']:.1f} s "
          f"({res['model']})")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from ray_jobs.embed import main as _main  # module-level classes pickle by reference (see finetune)

    sys.exit(_main())
