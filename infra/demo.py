"""`make demo`: the whole pipeline on this machine, end to end, in a few minutes.

    python -m infra.demo [--workdir data/demo] [--pretrain-steps 40] [--finetune-steps 60]

1. writes miniature raw archives (real formats) for two GeoPlex datasets with different sensor sets;
2. starts a local Ray head (token auth, dashboard on 127.0.0.1) unless one of ours already runs;
3. ingests both archives into Zarr stores with Ray Data, on that cluster;
4. submits tiny JEPA pretraining with `ray job submit`, then a fine-tune of its EMA teacher on
   PLANTED, then the test-split evaluation — exactly the commands one would send to a real cluster;
5. logs everything to a local MLflow (sqlite file in the repo), prints where to look, and stops
   what it started.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from infra import local_stack

REPO = Path(__file__).resolve().parent.parent
DATASETS = {"planted": 400, "treesatai-ts": 12}  # tiles of each sample archive


def _step(i: int, n: int, text: str) -> None:
    print(f"\n\033[1m[{i}/{n}] {text}\033[0m", flush=True)


def _run(argv: list[str], env: dict[str, str] | None = None) -> None:
    print("$ " + " ".join(shlex.quote(a) for a in argv), flush=True)
    subprocess.run(argv, check=True, cwd=REPO, env=env)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m infra.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="data/demo", help="where archives, stores and runs go")
    ap.add_argument("--pretrain-steps", type=int, default=40)
    ap.add_argument("--finetune-steps", type=int, default=60)
    args = ap.parse_args(argv)

    t0 = time.time()
    work = (REPO / args.workdir).resolve()
    raw, stores, runs = work / "raw", work / "stores", work / "runs"
    tracking = f"sqlite:///{REPO / 'mlflow.db'}"
    py = sys.executable
    n = 6

    _step(1, n, "sample archives in the real raw formats")
    for name, tiles in DATASETS.items():
        if (raw / name).exists():
            print(f"{raw / name} exists, reused")
            continue
        _run([py, "-m", "pipelines.samples", "--dataset", name, "--out", str(raw / name), "--tiles", str(tiles)])

    _step(2, n, "local Ray cluster (token auth, dashboard on 127.0.0.1)")
    state_dir = REPO / ".stack"
    before = local_stack.State.load(state_dir)
    was_running = before is not None and local_stack._process(before, "ray") is not None
    state = local_stack.up(state_dir, services=("ray",))
    # The same variables as `source .stack/env`: RAY_ADDRESS (GCS) for drivers such as the ingest,
    # RAY_API_SERVER_ADDRESS (dashboard) for `ray job submit`.
    env = {k: v for k, v in os.environ.items() if k not in local_stack.UNSET}
    env.update(local_stack.user_env(state))
    submit = [py, "-m", "ray.scripts.scripts", "job", "submit", "--working-dir", str(REPO), "--"]
    # Jobs run in a copy of the working dir: every path they get is absolute.
    common = ["--set", f"data.root={stores}", "--set", f"storage_path={runs}",
              "--set", f"mlflow.tracking_uri={tracking}"]
    try:
        _step(3, n, "ingest both archives into sharded Zarr stores with Ray Data")
        for name in DATASETS:
            _run([py, "-m", "pipelines.ingest", "--dataset", name, "--raw", str(raw / name), "--out", str(stores)],
                 env=env)

        _step(4, n, f"JEPA pretraining of a tiny AnySat ({args.pretrain_steps} steps, 2 DDP workers)")
        k = args.pretrain_steps
        _run(submit + ["python", "-m", "ray_jobs.pretrain", "--config", "configs/pretrain/geoplex-tiny.yaml",
                       *common, "--set", f"train.max_steps={k}", "--set", f"train.eval_every={k // 2}",
                       "--set", f"checkpoint.every={k // 2}", "--set", "data.val_batches=1"], env=env)

        _step(5, n, f"fine-tune the pretrained EMA teacher on PLANTED ({args.finetune_steps} steps)")
        k = args.finetune_steps
        ft = ["--config", "configs/finetune/planted-cls-ft-tiny.yaml", *common,
              "--set", "encoder.source=checkpoint", "--set", f"encoder.uri={runs / 'geoplex-tiny'}",
              "--set", f"train.max_steps={k}", "--set", f"train.eval_every={k // 2}",
              "--set", f"checkpoint.every={k // 2}"]
        _run(submit + ["python", "-m", "ray_jobs.finetune", *ft], env=env)

        _step(6, n, "evaluate on the test split (metrics, confusion matrix, per-class table)")
        _run(submit + ["python", "-m", "ray_jobs.evaluate", *ft], env=env)
    finally:
        if not was_running:
            local_stack.down(state_dir)

    print(f"\n\033[1mdemo finished in {time.time() - t0:.0f} s\033[0m")
    print(f"  raw archives : {raw}")
    print(f"  Zarr stores  : {stores}   (xarray.open_zarr('{stores}/planted.zarr', group='s2'))")
    print(f"  checkpoints  : {runs}/geoplex-tiny, {runs}/planted-cls-ft-tiny")
    print(f"  MLflow       : {tracking}  ->  `make mlflow-ui`, then open http://127.0.0.1:5001")
    return 0


if __name__ == "__main__":
    sys.exit(main())
