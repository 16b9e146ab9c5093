"""Scene inference benchmark: peak memory and time against scene area (1x, 4x, 16x).

    make bench-predict           # or: python benchmarks/bench_predict.py --out benchmarks/results/predict.json

Each scale writes a synthetic multi-date S2 scene (``pipelines.scenegen``) and runs
``ray_jobs.predict`` with a tiny random tile classifier in its own subprocess (fresh interpreter,
fresh local Ray with ``--num-cpus``); the parent samples the RSS of that process tree (driver +
raylet + workers) with psutil for the peak. The shard size is fixed, so a larger scene means more
shards, not larger ones: if memory is bounded by the windows in flight, the peak stays flat while the
time grows linearly with the area. Figures: windows/s, MB/s of decoded input pixels
(float32, all dates and bands, each window counted once however often overlaps re-read it), peak RSS.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import ray
import torch
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from anysat import AnySat  # noqa: E402
from pipelines.scenegen import write_scene  # noqa: E402
from ray_jobs import predict  # noqa: E402
from ray_jobs.finetune_config import ResolvedTask  # noqa: E402
from ray_jobs.runtime import split_state  # noqa: E402
from ray_jobs.task import FT_STATE_FILE, build_task_model  # noqa: E402

TASK = ResolvedTask(dataset="planted", label="species", kind="multiclass", classes=[f"c{i}" for i in range(8)],
                    head="tile", output_modality=None, proj_size=1, patch_size_m=30, loss="ce", monitor="f1_macro",
                    conventions=[], ignore_index=None)


def _checkpoint(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = build_task_model(AnySat.from_size("tiny", sensors=["s2"]), TASK, freeze=False).eval()
    torch.save({"model": split_state(model), "step": 0, "mlflow_run_id": ""}, folder / "state.pt")
    torch.save({"task": TASK.model_dump()}, folder / FT_STATE_FILE)
    return folder


def child(cfg: dict) -> None:
    ray.init(address="local", num_cpus=cfg["num_cpus"], include_dashboard=False, logging_level=logging.WARNING)
    t0 = time.perf_counter()
    rc = predict.main(["--model", cfg["model"], "--inputs", cfg["scene"], "--out", cfg["out"], "--window-m", "120",
                       "--overlap-m", str(cfg["overlap_m"]), "--shard-windows", str(cfg["shard_windows"]),
                       "--concurrency", str(cfg["concurrency"]), "--batch-size", "64", "--no-progress",
                       "--overwrite"])
    print("RESULT " + json.dumps({"rc": rc, "seconds": time.perf_counter() - t0}), flush=True)


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:  # the tree changed (or ended) while it was walked: skip this sample
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_scale(cfg: dict) -> dict:
    proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    ps, peak, stop = psutil.Process(proc.pid), [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _tree_rss(ps))
            time.sleep(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, _ = proc.communicate()
    stop.set()
    th.join()
    line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        raise RuntimeError(f"scale {cfg['scale']}: child failed ({proc.returncode})\n{out[-2000:]}")
    res = json.loads(line[7:])
    return {**res, "peak_rss_mb": peak[0] / 2**20}


def write_report(result: dict, path: Path) -> str:
    """The markdown beside the JSON: one row per scale and a least-squares line seconds = a + b * windows
    (linear time: the fixed cost a is starting the actor pool, 1 / b the steady windows/s)."""
    rows, a, load = result["rows"], result["args"], result["load_avg"]
    w = [r["windows"] for r in rows]
    t = [r["seconds"] for r in rows]
    n, mw, mt = len(w), sum(w) / len(w), sum(t) / len(t)
    b = sum((x - mw) * (y - mt) for x, y in zip(w, t)) / max(1e-9, sum((x - mw) ** 2 for x in w))
    c = mt - b * mw
    ss = sum((y - c - b * x) ** 2 for x, y in zip(w, t))
    r2 = 1 - ss / max(1e-9, sum((y - mt) ** 2 for y in t)) if n > 2 else float("nan")
    lines = ["# Scene inference benchmark (`make bench-predict`)", "",
             f"Tiny random tile classifier (s2, {a['dates']} dates), 120 m windows, overlap {a['overlap_m']:g} m, "
             f"{a['shard_windows']}x{a['shard_windows']} windows per shard, {a['num_cpus']} Ray CPUs, "
             f"{a['concurrency']} inference actor(s); load average at the end {load[0]:.1f} on {result['cpus']} "
             "cores. Seconds include starting the actor pool, not Ray; peak RSS is the whole process tree "
             "(driver, raylet, GCS, Ray Data workers).", "",
             "| area | scene px | windows | seconds | windows/s | MB/s (decoded input) | peak RSS (MB) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['scale']}x | {r['side_px']}² | {r['windows']} | {r['seconds']:.1f} | "
                     f"{r['windows_per_s']:.1f} | {r['mb_per_s']:.2f} | {r['peak_rss_mb']:.0f} |")
    lines += ["", f"Least squares: seconds = {c:.1f} + {b * 1000:.1f} ms x windows (R² {r2:.3f}): "
                  f"{1 / max(b, 1e-9):.1f} windows/s once the actors run."]
    path.write_text("\n".join(lines) + "\n")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks/bench_predict.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/results/predict.json")
    ap.add_argument("--base-px", type=int, default=96, help="side of the 1x scene in 10 m pixels")
    ap.add_argument("--scales", default="1,4,16", help="area multiples")
    ap.add_argument("--dates", type=int, default=3)
    ap.add_argument("--overlap-m", type=float, default=0.0)
    ap.add_argument("--shard-windows", type=int, default=4)
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as d:
        model = _checkpoint(Path(d) / "ck")
        for scale in (int(s) for s in args.scales.split(",")):
            side = int(round(args.base_px * scale ** 0.5))
            scene = write_scene(Path(d) / f"scene{scale}", size=side, dates=args.dates, sensors=("s2",))
            doc = yaml.safe_load(scene.read_text())
            doc["sensors"]["s2"].update(mean=[1000.0] * 10, std=[800.0] * 10)
            scene.write_text(yaml.safe_dump(doc))
            cfg = {"scale": scale, "model": str(model), "scene": str(scene), "out": str(Path(d) / f"map{scale}.zarr"),
                   "overlap_m": args.overlap_m, "shard_windows": args.shard_windows, "num_cpus": args.num_cpus,
                   "concurrency": args.concurrency}
            win = 12 - int(args.overlap_m // 10)
            n_axis = 1 + -(-max(0, side - 12) // win)
            res = run_scale(cfg)
            mb = side * side * args.dates * 10 * 4 / 2**20
            row = {"scale": scale, "side_px": side, "windows": n_axis * n_axis, **res,
                   "windows_per_s": n_axis * n_axis / res["seconds"], "input_mb": mb, "mb_per_s": mb / res["seconds"]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {"rows": rows, "load_avg": os.getloadavg(), "cpus": os.cpu_count(), "args": vars(args) | {"child": None}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(write_report(result, Path(args.out).with_suffix(".md")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
