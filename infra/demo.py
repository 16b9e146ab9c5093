"""`make demo`: the whole pipeline on this machine, end to end, in a few minutes.

    python -m infra.demo [--workdir data/demo] [--pretrain-steps 40] [--finetune-steps 60]

1. writes miniature raw archives (real formats) for two GeoPlex datasets with different sensor sets;
2. starts a local Ray head (token auth, dashboard on 127.0.0.1) unless one of ours already runs;
3. ingests both archives into Zarr stores with Ray Data, on that cluster;
4. submits tiny JEPA pretraining with `ray job submit`, then a fine-tune of its EMA teacher on
   PLANTED, then the test-split evaluation — exactly the commands one would send to a real cluster;
5. logs everything to a local MLflow (sqlite file in the repo), prints where to look, and stops
   what it started;
6. predicts over a small synthetic multi-date S2 + S1 scene (GeoTIFFs) with the fine-tuned model
   (`ray_jobs.predict`, submitted the same way) and draws the georeferenced class map it wrote.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import rasterio
import xarray as xr
from rasterio.crs import CRS

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
    ap.add_argument("--scene-px", type=int, default=96, help="side of the synthetic scene, 10 m pixels")
    args = ap.parse_args(argv)

    t0 = time.time()
    work = (REPO / args.workdir).resolve()
    raw, stores, runs = work / "raw", work / "stores", work / "runs"
    tracking = f"sqlite:///{REPO / 'mlflow.db'}"
    py = sys.executable
    n = 7

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

        _step(7, n, f"predict over a synthetic {args.scene_px * 10} m scene: windows in, a georeferenced Zarr map out")
        scene, map_url = _predict(py, submit, ft, work, args.scene_px, env)
    finally:
        if not was_running:
            local_stack.down(state_dir)

    print(f"\n\033[1mdemo finished in {time.time() - t0:.0f} s\033[0m")
    print(f"  raw archives : {raw}")
    print(f"  Zarr stores  : {stores}   (xarray.open_zarr('{stores}/planted.zarr', group='s2'))")
    print(f"  checkpoints  : {runs}/geoplex-tiny, {runs}/planted-cls-ft-tiny")
    print(f"  MLflow       : {tracking}  ->  `make mlflow-ui`, then open http://127.0.0.1:5001")
    print(f"  scene map    : {map_url}   (rioxarray: xarray.open_zarr(..., decode_coords='all').rio.crs), "
          f"class map COG {work / 'predict/class.tif'}, picture {work / 'predict/class_map.png'}")
    print(f"  scene        : {scene}")
    return 0


def _predict(py: str, submit: list[str], ft: list[str], work: Path, size: int,
             env: dict[str, str]) -> tuple[Path, Path]:
    """Step 7: a synthetic scene, `ray_jobs.predict` with the fine-tuned model, a picture of the map."""
    scene_dir, out = work / "scene", work / "predict"
    _run([py, "-m", "pipelines.scenegen", "--out", str(scene_dir), "--size", str(size)])
    # The fine-tuning config brings the training store's statistics and the 120 m tile as the window.
    map_url = out / "map.zarr"
    _run(submit + ["python", "-m", "ray_jobs.predict", "--model", str(work / "runs/planted-cls-ft-tiny"),
                   "--inputs", str(scene_dir / "scene.yaml"), "--out", str(map_url), "--output", "probability",
                   "--overlap-m", "40", "--cog", str(out / "class.tif"), "--overwrite", *ft], env=env)
    draw_map(map_url, scene_dir / "fields.tif", out / "class_map.png")
    return scene_dir / "scene.yaml", map_url


def draw_map(map_url: Path, fields: Path, png: Path) -> None:
    """The predicted class map beside the scene's true fields, in map coordinates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = xr.open_zarr(map_url, consolidated=False, decode_coords="all")
    with rasterio.open(fields) as src:
        truth, b = src.read(1), src.bounds
    pred = ds["class"].values
    crs = CRS.from_wkt(ds["spatial_ref"].attrs["crs_wkt"]).to_string()
    x, y = ds["x"].values, ds["y"].values
    res = float(x[1] - x[0]) if len(x) > 1 else 10.0
    extent = (x[0] - res / 2, x[-1] + res / 2, y[-1] - res / 2, y[0] + res / 2)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.4), constrained_layout=True)
    for ax, img, ext, title in ((axes[0], truth, (b.left, b.right, b.bottom, b.top), "true fields (class)"),
                                (axes[1], pred, extent, "predicted class map (ray_jobs.predict)")):
        im = ax.imshow(img, extent=ext, cmap="viridis", vmin=0, vmax=39, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(f"x (m, {crs})", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.ticklabel_format(useOffset=False, style="plain")
    axes[0].set_ylabel("y (m)", fontsize=8)
    fig.colorbar(im, ax=axes, shrink=0.8, label="PLANTED class index")
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
