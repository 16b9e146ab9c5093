"""AnySat JEPA pretraining on Ray Train.

    python -m ray_jobs.pretrain --config configs/pretrain/geoplex-tiny.yaml [--set key=value ...]

The same command runs on a laptop (a local Ray instance is started) and, unchanged, as a Ray job:

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python -m ray_jobs.pretrain --config configs/pretrain/geoplex-tiny.yaml \\
        --set data.root=$PWD/data/stores --set storage_path=$PWD/runs \\
        --set mlflow.tracking_uri=sqlite:///$PWD/mlflow.db

(a job runs in a copy of the working dir, so local paths are best given absolute; the shell expands
``$PWD`` at submit time). Resubmitting the same ``name`` with the same ``storage_path`` resumes from
its latest checkpoint into the same MLflow run.
"""

from __future__ import annotations

import argparse
import os
import sys

from ray_jobs.config import (ConfigError, PretrainConfig, check_stores, entrypoint_parser, load_config,
                             resolve_paths, setup_logging)


def parse_args(argv=None) -> argparse.Namespace:
    p = entrypoint_parser("python -m ray_jobs.pretrain", __doc__, "YAML config (configs/pretrain/*.yaml)")
    p.add_argument("--dry-run", action="store_true", help="validate config and stores, print the plan, exit")
    return p.parse_args(argv)


def main(argv=None) -> int:
    setup_logging()
    args = parse_args(argv)
    try:
        cfg = resolve_paths(load_config(args.config, args.overrides, cls=PretrainConfig))
        check_stores(cfg)
        from ray_jobs.data import resolve_plans, store_versions

        plans = resolve_plans(cfg)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for n, p in plans.items():
        print(f"{n}: {p['url']} {p['n_split']} {p['split']} tiles, batch {p['batch_size']}, weight {p['weight']}, "
              f"patch sizes {p['patch_sizes_m']} m, sensors {list(p['sensors'])}")
    print(f"storage: {cfg.storage_path}/{cfg.name}   mlflow: {cfg.mlflow.tracking_uri} "
          f"(experiment {cfg.mlflow.experiment})")
    if args.dry_run:
        return 0

    from ray_jobs.train import drive, fit

    return drive(cfg, store_versions(plans), lambda run_id: fit(cfg, plans, run_id), "training")


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    sys.exit(main())
