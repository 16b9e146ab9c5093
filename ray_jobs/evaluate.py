"""Evaluate a fine-tuned model on a split (default: test) and log everything to MLflow.

    python -m ray_jobs.evaluate --config configs/finetune/<experiment>.yaml [--set key=value ...] \\
        [--checkpoint <run folder | checkpoint folder | state.pt>] [--split test] [--weights best|last]

The model is rebuilt from the fine-tuning checkpoint alone (architecture read off its tensors); by
default the latest checkpoint of ``<storage_path>/<name>`` and its best-validation weights. Metrics
(``<split>/<metric>``, anysat.metrics), a confusion-matrix plot (row-normalised; multi-label tasks:
per-class bars) and its raw counts (CSV), a grid of input / truth / prediction maps (segmentation)
and the per-class table (CSV + Markdown) go to the fine-tuning run's MLflow run (the run id stored in
the checkpoint), under ``evaluation/<split>/``. The same logging runs at the end of every fine-tuning job.

Runs in this process, no Ray cluster needed: tiles are read with the read function the training
streams use, and the window of a cropped sensor follows ``eval.test_crop`` (centre, a seeded random
window per tile, or the official FLAIR five-window average), exactly as the fine-tuning job's test.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from ray_jobs.cli import entrypoint_parser, run_cli, script
from ray_jobs.credentials import redact
from ray_jobs.finetune_config import FinetuneConfig, ResolvedTask
from ray_jobs.plan import DataPlan, Split
from ray_jobs.plots import log_evaluation, per_class_table
from ray_jobs.task import load_finetuned, model_from_state, prepare_task, run_evaluation
from ray_jobs.tracking import reopen_run

__all__ = ["main"]


@dataclass(frozen=True)
class _Job:
    cfg: FinetuneConfig
    plan: DataPlan
    split: Split
    checkpoint: dict
    """:func:`ray_jobs.task.load_finetuned`'s result."""
    weights: str
    mlflow: bool


def _parser() -> argparse.ArgumentParser:
    p = entrypoint_parser("python -m ray_jobs.evaluate", __doc__, "the fine-tuning config (configs/finetune/*.yaml)",
                          address=False)  # runs in this process, without Ray
    p.add_argument("--checkpoint", default=None,
                   help="run folder, checkpoint folder or state.pt (default: <storage_path>/<name>)")
    p.add_argument("--split", default=None, help="split to evaluate (default: eval.test_split)")
    p.add_argument("--weights", choices=("best", "last"), default="best",
                   help="best validation weights (if recorded) or the checkpoint's last weights")
    p.add_argument("--no-mlflow", action="store_true", help="print only, log nothing")
    return p


def _prepare(args: argparse.Namespace) -> _Job:
    cfg, plan, task = prepare_task(args.config, args.overrides)
    split = args.split or cfg.eval.test_split
    if split is None or not plan.has_split(split):
        raise ValueError(f"split {split!r} not in the store (splits: {sorted(plan.split_aliases)})")
    ck = load_finetuned(args.checkpoint or f"{cfg.storage_path.rstrip('/')}/{cfg.name}", cfg.storage_options,
                        task, args.weights)
    return _Job(cfg, plan, split, ck, args.weights, not args.no_mlflow)


def _run(job: _Job) -> int:
    cfg, plan = job.cfg, job.plan
    task: ResolvedTask = job.checkpoint["task"]
    step, state_file, run_id = job.checkpoint["step"], job.checkpoint["file"], job.checkpoint["run_id"]
    name = job.split if isinstance(job.split, str) else "test"  # metric prefix of a list of splits: test
    model = model_from_state(job.checkpoint["state"], task)
    attention = cfg.encoder.attention or cfg.model.kwargs.get("attention")
    if attention:
        model.encoder.set_attention(attention)
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.use_gpu else "cpu")
    model.to(device)

    scalars, metrics, samples = run_evaluation(model, plan, task, job.split, rank=0, world=1, device=device,
                                               seed=cfg.seed, keep_samples=8, prefix=name, crop=cfg.eval.test_crop,
                                               crop_offsets=cfg.eval.crop_offsets)
    stats, per_class = metrics.statistics(), metrics.per_class()
    _, md = per_class_table(per_class, task.classes)
    print(f"{task.dataset}/{task.label} {name} ({job.weights} weights, step {step}, {state_file}):")
    for k, v in sorted(scalars.items()):
        print(f"  {k}: {v:.4f}")
    print(md)
    if job.mlflow and cfg.mlflow.enabled and run_id:
        with reopen_run(cfg.mlflow.tracking_uri, run_id) as tracker:
            tracker.log_metrics(scalars, step)
            log_evaluation(tracker, task, name, stats, per_class, samples, scalars)
            tracker.set_tags({f"anysat.evaluated.{name}": job.weights})
        print(f"logged to MLflow run {run_id} at {redact(cfg.mlflow.tracking_uri)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_parser(), _prepare, _run, argv)


if __name__ == "__main__":
    script("ray_jobs.evaluate")
