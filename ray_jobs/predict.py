"""Inference over whole scenes with Ray Data: rasters in, a georeferenced Zarr map out, shard by shard.

    python -m ray_jobs.predict --model <run folder | checkpoint | runs:/ID/model | models:/NAME/V |
        official:AnySat.pth> --inputs scene.yaml --out map.zarr [--config finetune.yaml [--set k=v ...]]
        [--output class|probability|patch|tile] [--window-m M] [--overlap-m M] [--blend average|centre]
        [--cog class.tif] [--concurrency N] [--use-gpu]

The scene spec (:mod:`pipelines.scene`) names each sensor's rasters (local or ``s3://``, one per
date) and the output grid; ``--config`` (the fine-tuning config) supplies the training store's
normalisation statistics, date convention and tile size when the spec does not. The map format is
:mod:`pipelines.maps` (rioxarray-readable CRS and transform); windows and blending are
:mod:`ray_jobs.windows` (default: overlap-weighted average of logits).

Pipeline: one Ray Data row per output shard -> a read task (:class:`ReadShard`) reads that shard's
windows plus their margin from every raster, through a warped VRT, nothing else -> an actor pool
(:class:`ShardWriter`: model loaded once per actor, CPU or GPU) cuts the windows, runs them in
batches, blends them and writes the shard's chunks and its ``done`` marker itself, so writes go out
in parallel from every actor, never through the driver. Memory is bounded by the shards in flight
(Ray Data backpressure), not by the scene size. A rerun with the same arguments skips every shard
with a marker: a killed job resumes.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import ray.data
import torch
from tqdm import tqdm

from pipelines.maps import (MapError, MapLayout, MapVariable, create_map, done_shards, export_cog, map_state,
                           write_map_shard)
from pipelines.scene import Scene, load_scene, read_region
from ray_jobs.cli import Parser, run_cli, script
from ray_jobs.cluster import check_gpus, init_ray
from ray_jobs.data import quiet_ray_data
from ray_jobs.finetune_config import FinetuneConfig
from ray_jobs.inference_log import log_inference
from ray_jobs.plan import DataPlan
from ray_jobs.scene_model import OUTPUTS, ModelSpec, Normalisation, SceneModel, load_model_spec, normalisation
from ray_jobs.task import prepare_task
from ray_jobs.windows import BLENDS, Accumulator, WindowPlan

__all__ = ["main", "ReadShard", "ShardWriter", "PredictJob", "prepare"]


@dataclass(frozen=True)
class PredictJob:
    scene: Scene
    plan: WindowPlan
    layout: MapLayout
    spec: ModelSpec
    norm: Normalisation
    output: str
    patch_size_m: int
    out: str
    storage_options: dict
    tracking_uri: str | None
    args: argparse.Namespace


class ReadShard:
    """Ray Data task: ``{"shard": [i]}`` -> the pixels of shard ``i``'s windows, per sensor."""

    def __init__(self, scene: Scene, plan: WindowPlan):
        self.scene, self.plan = scene, plan

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        i = int(batch["shard"][0])
        _, wins = self.plan.shard_windows(i)
        row, col, h, w = self.plan.region(wins)
        out = {"shard": np.array([i])}
        for key, s in self.scene.sensors.items():
            f = s.factor
            out[key] = read_region(s, self.scene.grid, row // f, col // f, h // f, w // f)[None]
        return out


class ShardWriter:
    """Ray Data actor: a shard's pixels -> model outputs of its windows -> blended -> written."""

    def __init__(self, job: dict, batch_size: int, use_gpu: bool = False):
        spec = ray.get(job["spec"]) if isinstance(job["spec"], ray.ObjectRef) else job["spec"]
        self.scene, self.plan, self.layout = job["scene"], job["plan"], job["layout"]
        self.output, self.out, self.so = job["output"], job["out"], job["storage_options"]
        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        days = {k: s.days for k, s in self.scene.sensors.items()}
        self.model = SceneModel(spec, self.output, job["patch_size_m"], job["norm"], days, device)
        self.batch_size = batch_size

    def shard(self, i: int, regions: dict[str, np.ndarray]) -> int:
        """Predict, blend and write shard ``i`` from its region pixels; returns the windows run."""
        box, wins = self.plan.shard_windows(i)
        row, col, _, _ = self.plan.region(wins)
        n = self.plan.win // self.plan.cell
        acc = Accumulator(self.plan, box, self.model.channels)
        for b in range(0, len(wins), self.batch_size):
            chunk = wins[b:b + self.batch_size]
            raw = {}
            for key, s in self.scene.sensors.items():
                f, size = s.factor, self.plan.win // s.factor
                raw[key] = np.stack([regions[key][:, :, (r - row) // f:(r - row) // f + size,
                                                  (c - col) // f:(c - col) // f + size] for r, c in chunk])
            for origin, y in zip(chunk, self.model(raw, n)):
                acc.add(origin, y)
        write_map_shard(self.out, self.layout, i, self._variables(acc.result()), self.so)
        return len(wins)

    def _variables(self, v: np.ndarray) -> dict[str, np.ndarray]:
        if self.output in ("patch", "tile"):
            return {"embedding": v}
        out = {"class": v.argmax(0).astype(np.int16)}
        if self.output == "probability":
            t = torch.from_numpy(v)
            multilabel = self.model.task.kind == "multilabel"
            out["probability"] = (torch.sigmoid(t) if multilabel else torch.softmax(t, 0)).numpy()
        return out

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keys = list(self.scene.sensors)
        shards = [int(s) for s in batch["shard"]]
        done = [self.shard(i, {k: batch[k][j] for k in keys}) for j, i in enumerate(shards)]
        return {"shard": np.array(shards), "windows": np.array(done)}


def _metres_to_px(value: float, res: float, what: str) -> int:
    px = value / res
    if px < 0 or abs(px - round(px)) > 1e-6:
        raise ValueError(f"{what} {value:g} m is not a whole number of {res:g} m grid pixels")
    return int(round(px))


def prepare(args: argparse.Namespace) -> PredictJob:
    """Every check before any work: scene spec, model, grid, windows, an existing map."""
    for name in ("batch_size", "concurrency", "shard_windows", "num_cpus", "read_num_cpus"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.overrides and not args.config:
        raise ValueError("--set needs --config")
    scene = load_scene(args.inputs)
    cfg: FinetuneConfig | None = None
    data: DataPlan | None = None
    if args.config:
        cfg, data, _ = prepare_task(args.config, args.overrides)
    tracking = args.tracking_uri or (cfg.mlflow.tracking_uri if cfg else None)
    spec = load_model_spec(args.model, tracking, cfg.storage_options if cfg else None, args.weights)
    if args.output in ("class", "probability") and spec.kind != "finetuned":
        raise ValueError(f"--output {args.output} needs a fine-tuned model; {args.model} is an encoder "
                         "(--output patch or tile)")
    norm = normalisation(scene, data)
    patch_m = args.patch_size_m or (spec.task["patch_size_m"] if spec.task else None)
    window_m = args.window_m or (data.tile_m if data else None)
    if patch_m is None or window_m is None:
        raise ValueError("give --window-m and --patch-size-m (or --config / a fine-tuned model that has them)")
    res = scene.grid.resolution
    win = _metres_to_px(window_m, res, "--window-m")
    overlap = _metres_to_px(window_m / 2 if args.overlap_m is None else args.overlap_m, res, "--overlap-m")
    cell = 1 if args.output in ("class", "probability") else _metres_to_px(patch_m, res, "patch size")
    for key, s in scene.sensors.items():
        if win % s.factor or (win - overlap) % s.factor:
            raise ValueError(f"sensors.{key}: window {win} px and stride {win - overlap} px must be multiples "
                             f"of its {s.factor} grid px")
    shard = args.shard_windows * (win - overlap) // cell if win > overlap else 1
    wplan = WindowPlan(scene.grid.height, scene.grid.width, win, overlap, cell, max(1, shard), args.blend)
    if args.output in ("class", "probability"):
        classes = tuple(spec.task["classes"])
        variables = [MapVariable("class", "int16")]
        if args.output == "probability":
            variables.append(MapVariable("probability", "float32", classes))
    else:
        dim = SceneModel(spec, args.output, patch_m, norm, {}).channels
        variables = [MapVariable("embedding", "float32", tuple(f"e{i}" for i in range(dim)))]
    info = {"model": spec.description, "output": args.output, "window_m": window_m, "overlap_m": overlap * res,
            "blend": args.blend, "patch_size_m": patch_m, "scene": scene.source,
            "sensors": {k: [len(s.files), list(s.days)] for k, s in scene.sensors.items()},
            "classes": list(spec.task["classes"]) if spec.task else []}
    layout = MapLayout(scene.grid.scaled(cell), wplan.shard, tuple(variables), info)
    so = dict(cfg.data.storage_options) if cfg and "://" in args.out else {}
    if not args.overwrite and map_state(args.out, layout, so) == "other":
        raise MapError(f"--out {args.out} exists and is not a map of this scene, model and output; "
                       "choose another --out or pass --overwrite")
    return PredictJob(scene, wplan, layout, spec, norm, args.output, int(patch_m), args.out, so,
                      tracking if (cfg is None or cfg.mlflow.enabled) else None, args)


def _run(job: PredictJob) -> int:
    args = job.args
    init_ray(log_to_driver=False)
    if args.use_gpu:
        check_gpus(args.concurrency, f"--use-gpu with --concurrency {args.concurrency} inference actor(s)")
    quiet_ray_data()
    t0 = time.perf_counter()
    resumed = create_map(job.out, job.layout, job.storage_options, overwrite=args.overwrite)
    finished = done_shards(job.out, job.storage_options) if resumed else set()
    todo = [i for i in range(job.layout.n_shards) if i not in finished]
    total = sum(len(job.plan.shard_windows(i)[1]) for i in todo)
    if finished:
        print(f"resuming {job.out}: {len(finished)} of {job.layout.n_shards} shards already written")
    ctx = {"spec": ray.put(job.spec), "scene": job.scene, "plan": job.plan, "layout": job.layout,
           "output": job.output, "out": job.out, "storage_options": job.storage_options, "norm": job.norm,
           "patch_size_m": job.patch_size_m}
    if todo:
        ds = ray.data.from_items([{"shard": i} for i in todo], override_num_blocks=len(todo))
        ds = ds.map_batches(ReadShard(job.scene, job.plan), batch_size=1, batch_format="numpy",
                            num_cpus=args.read_num_cpus)
        ds = ds.map_batches(ShardWriter, fn_constructor_kwargs={"job": ctx, "batch_size": args.batch_size,
                                                                "use_gpu": args.use_gpu},
                            batch_size=1, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=args.concurrency), num_cpus=args.num_cpus,
                            num_gpus=1 if args.use_gpu else 0)
        with tqdm(total=total, unit="win", desc="windows", disable=args.no_progress) as bar:
            for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
                bar.update(int(b["windows"].sum()))
    missing = set(range(job.layout.n_shards)) - done_shards(job.out, job.storage_options)
    if missing:
        raise RuntimeError(f"shards {sorted(missing)[:10]} were not written; rerun to resume")
    dt = time.perf_counter() - t0
    print(f"wrote {job.output} map {job.layout.grid.height}x{job.layout.grid.width} cells, "
          f"{job.layout.n_shards} shards ({len(todo)} now, {total} windows, {total / max(dt, 1e-9):.1f} windows/s) "
          f"to {job.out} in {dt:.1f} s ({job.spec.description})")
    if args.cog:
        print(f"class map as COG: {export_cog(job.out, args.cog, job.storage_options)}")
    if job.tracking_uri and not args.no_mlflow:
        run_id = log_inference(job.tracking_uri, "anysat-inference", f"predict-{Path(job.out).stem}",
                               {"job": "predict", **job.layout.info, "out": job.out, "blend": job.plan.blend,
                                "shards": job.layout.n_shards, "concurrency": args.concurrency},
                               {"windows": total, "seconds": dt, "windows_per_s": total / max(dt, 1e-9)},
                               {"anysat.output": job.out})
        print(f"logged to MLflow run {run_id}")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m ray_jobs.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="fine-tuning run / checkpoint / state.pt, runs:/ID/model, "
                                                  "models:/NAME/VERSION, or official:<AnySat.pth>")
    p.add_argument("--inputs", required=True, help="scene spec YAML (pipelines/scene.py)")
    p.add_argument("--out", required=True, help="output map: a .zarr folder or s3:// URL")
    p.add_argument("--config", default=None, help="fine-tuning config: normalisation statistics, dates, tile size")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a --config key (repeatable)")
    p.add_argument("--address", default=None, help="Ray cluster (default: $RAY_ADDRESS or a local Ray)")
    p.add_argument("--output", choices=OUTPUTS, default="class")
    p.add_argument("--window-m", type=float, default=None, help="window side (default: the training tile)")
    p.add_argument("--overlap-m", type=float, default=None, help="overlap of neighbouring windows "
                                                                 "(default: half a window)")
    p.add_argument("--blend", choices=BLENDS, default="average")
    p.add_argument("--patch-size-m", type=int, default=None, help="default: the fine-tuned task's")
    p.add_argument("--shard-windows", type=int, default=16, help="window strides per output shard side")
    p.add_argument("--weights", choices=("best", "last"), default="best")
    p.add_argument("--tracking-uri", default=None, help="MLflow for runs:/ and models:/ (default: the config's)")
    p.add_argument("--batch-size", type=int, default=64, help="windows per forward pass")
    p.add_argument("--concurrency", type=int, default=1, help="inference actors")
    p.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per inference actor")
    p.add_argument("--read-num-cpus", type=float, default=0.5, help="CPUs per read task")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per inference actor")
    p.add_argument("--cog", default=None, help="also export the class map as a Cloud-Optimised GeoTIFF")
    p.add_argument("--overwrite", action="store_true", help="replace a map of another layout at --out")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the run (logged when --config or "
                                                              "--tracking-uri names an MLflow)")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(_parser(), prepare, _run, argv)


if __name__ == "__main__":
    script("ray_jobs.predict")
