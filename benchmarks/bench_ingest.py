"""Ingest benchmark: Ray Data on N cores vs a single-process loop, codec limit, peak memory.

    make bench-ingest            # or: python benchmarks/bench_ingest.py --out benchmarks/results/ingest.json

Every ingest runs in its own subprocess (fresh interpreter, fresh local Ray with ``--num-cpus``), and
the parent samples the RSS of that process tree (driver + raylet + workers) with psutil for the peak.
Timings exclude starting Ray (a cluster is started once per job, not per ingest) but include the probe
pass, all reads, validation, encoding, writes, markers and the final attrs.

Figures:
- tiles/s and MB/s (uncompressed store bytes incl. time padding, and raw archive bytes read);
- the codec limit: one core encoding the very same arrays with the store's compressor (whole shards via
  ``pipelines.shardio.encode_shard``), no reading, no validation; N cores can at best do N times that;
- peak RSS at 1x and 4x the archive size (memory should not grow with the archive);
- before/after: the same runs with zarr's generic shard writer (ANYSAT_STORE_FAST_IO=0), and a
  comparison of candidate compressors on the PLANTED S2 bytes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import ray
import ray.data
import zarr
from numcodecs import Blosc, Zstd

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from pipelines.ingest import run_ingest  # noqa: E402
from pipelines.samplegen import generator_available, get_generator  # noqa: E402
from pipelines.shardio import encode_shard, shard_spec  # noqa: E402
from pipelines.storage import zarr_store  # noqa: E402
from pipelines.store import StoreReader  # noqa: E402


# ------------------------------------------------------------------------------------------------
# child: one ingest
# ------------------------------------------------------------------------------------------------
def child(cfg: dict) -> None:
    if cfg["executor"] == "ray":
        ray.init(address="local", num_cpus=cfg["num_cpus"], include_dashboard=False, logging_level=logging.WARNING)
        # start the worker processes before the clock runs (a job pays this once, not per ingest)
        ray.data.range(8, override_num_blocks=cfg["num_cpus"]).map(lambda r: r, num_cpus=1).take_all()
    t0 = time.perf_counter()
    res = run_ingest(cfg["dataset"], cfg["raw"], cfg["out"], executor=cfg["executor"], num_cpus=cfg["num_cpus"],
                     tiles_per_shard=cfg.get("tiles_per_shard"), overwrite=True, progress=False)
    dt = time.perf_counter() - t0
    print("RESULT " + json.dumps({"seconds": dt, "probe_seconds": res.probe_seconds,
                                  "write_seconds": res.write_seconds, "bytes": res.bytes_written,
                                  "tiles": res.n_tiles, "quarantined": len(res.quarantine)}), flush=True)


def run_child(cfg: dict, env_extra: dict | None = None) -> dict:
    env = dict(os.environ, **(env_extra or {}))
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(cfg)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    peak = 0
    stop = threading.Event()

    def sample():
        nonlocal peak
        try:
            p = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            return
        while not stop.is_set():
            total = 0
            try:
                for q in [p, *p.children(recursive=True)]:
                    try:
                        total += q.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
            except psutil.NoSuchProcess:
                break
            peak = max(peak, total)
            stop.wait(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    stop.set()
    th.join()
    line = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        raise RuntimeError(f"benchmark child failed ({proc.returncode}): {err[-3000:]}")
    res = json.loads(line[-1][len("RESULT "):])
    res["peak_rss_mb"] = peak / 2**20
    return res


# ------------------------------------------------------------------------------------------------
# parent
# ------------------------------------------------------------------------------------------------
def dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def ensure_sample(dataset: str, path: str, tiles: int) -> float:
    stamp = os.path.join(path, ".bench-complete")
    if os.path.exists(stamp) and open(stamp).read() == str(tiles):
        return 0.0
    shutil.rmtree(path, ignore_errors=True)
    t0 = time.perf_counter()
    get_generator(dataset)(path, tiles=tiles, seed=0)
    with open(stamp, "w") as f:
        f.write(str(tiles))
    return time.perf_counter() - t0


def codec_limit(url: str) -> dict:
    """One core encoding every sharded array of the store, shard by shard, with the store's codec."""
    r = StoreReader(url)
    root = zarr.open_group(zarr_store(url, read_only=True), mode="r")
    full = r.read(0, len(r))
    total, enc_bytes, seconds = 0, 0, 0.0
    for key, arr in full.items():
        spec = shard_spec(root[key])
        if spec is None:
            continue
        for s0 in range(0, len(r), spec.tiles):
            blk = np.ascontiguousarray(arr[s0:s0 + spec.tiles])
            t0 = time.perf_counter()
            b = encode_shard(spec, blk)
            seconds += time.perf_counter() - t0
            total += blk.nbytes
            enc_bytes += len(b)
    return {"mb": total / 1e6, "seconds": seconds, "mb_per_s": total / 1e6 / seconds,
            "compression_ratio": total / max(enc_bytes, 1)}


def compare_compressors(url: str) -> list[dict]:
    r = StoreReader(url)
    x = r.read(0, min(len(r), 1024), ["s2"], labels=False, tiles=False)["s2/data"]
    tiles = [np.ascontiguousarray(t) for t in x]
    cands = {"zstd-0 (zarr default)": Zstd(level=0), "zstd-3": Zstd(level=3),
             "blosc-zstd-1-shuffle": Blosc("zstd", 1, Blosc.SHUFFLE, typesize=4),
             "blosc-lz4-5-shuffle (chosen)": Blosc("lz4", 5, Blosc.SHUFFLE, typesize=4),
             "blosc-lz4-5-noshuffle": Blosc("lz4", 5, Blosc.NOSHUFFLE, typesize=4)}
    out = []
    for name, c in cands.items():
        t0 = time.perf_counter()
        enc = [c.encode(t) for t in tiles]
        dt = time.perf_counter() - t0
        t0 = time.perf_counter()
        for e in enc:
            c.decode(e)
        dd = time.perf_counter() - t0
        nb = sum(t.nbytes for t in tiles)
        out.append({"codec": name, "encode_mb_per_s": nb / 1e6 / dt, "decode_mb_per_s": nb / 1e6 / dd,
                    "ratio": nb / sum(len(e) for e in enc)})
    return out


def summarize(name: str, res: dict, raw_bytes: int) -> dict:
    s = res["seconds"]
    return {**res, "name": name, "tiles_per_s": res["tiles"] / s, "store_mb_per_s": res["bytes"] / 1e6 / s,
            "raw_mb_per_s": raw_bytes / 1e6 / s}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "ingest.json"))
    ap.add_argument("--work", default=os.path.join(ROOT, "data", "bench"))
    ap.add_argument("--tiles", type=int, default=2000)
    ap.add_argument("--pastis-tiles", type=int, default=50)
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--skip-before", action="store_true", help="skip the zarr-writer (before) runs")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return 0

    os.makedirs(args.work, exist_ok=True)
    n = args.num_cpus
    report: dict = {"machine": {"cpus": os.cpu_count(), "num_cpus": n, "load_avg_start": os.getloadavg()},
                    "runs": [], "notes": []}
    raw1 = os.path.join(args.work, f"planted-{args.tiles}")
    raw4 = os.path.join(args.work, f"planted-{4 * args.tiles}")
    report["generate_seconds"] = {"planted_1x": ensure_sample("planted", raw1, args.tiles)}
    b1 = dir_bytes(raw1)
    out = os.path.join(args.work, "stores")

    def run(name, dataset, raw, raw_bytes, executor, env=None, tag="planted"):
        cfg = {"dataset": dataset, "raw": raw, "out": os.path.join(out, name), "executor": executor, "num_cpus": n}
        r = summarize(name, run_child(cfg, env), raw_bytes)
        r.update({"dataset": dataset, "executor": executor, "tag": tag})
        report["runs"].append(r)
        print(f"{name:34s} {r['tiles']:6d} tiles {r['seconds']:7.2f} s {r['tiles_per_s']:8.1f} tiles/s "
              f"{r['store_mb_per_s']:7.1f} MB/s store {r['raw_mb_per_s']:7.1f} MB/s raw  peak {r['peak_rss_mb']:7.0f} MB",
              flush=True)
        return r

    loc = run("planted-local", "planted", raw1, b1, "local")
    ray1 = run("planted-ray", "planted", raw1, b1, "ray")
    if not args.skip_before:
        loc0 = run("planted-local-zarrwriter(before)", "planted", raw1, b1, "local", {"ANYSAT_STORE_FAST_IO": "0"})
        ray0 = run("planted-ray-zarrwriter(before)", "planted", raw1, b1, "ray", {"ANYSAT_STORE_FAST_IO": "0"})
        report["before_after"] = {"local_speedup": loc0["seconds"] / loc["seconds"],
                                  "ray_speedup": ray0["seconds"] / ray1["seconds"]}
    codec = codec_limit(os.path.join(out, "planted-local", "planted.zarr"))
    report["codec_limit_planted"] = {**codec, "mb_per_s_n_cores": codec["mb_per_s"] * n}
    report["compressors_planted_s2"] = compare_compressors(os.path.join(out, "planted-local", "planted.zarr"))
    report["generate_seconds"]["planted_4x"] = ensure_sample("planted", raw4, 4 * args.tiles)
    ray4 = run("planted-ray-4x", "planted", raw4, dir_bytes(raw4), "ray")
    shutil.rmtree(os.path.join(out, "planted-ray-4x"), ignore_errors=True)

    report["planted"] = {
        "ray_vs_local": loc["seconds"] / ray1["seconds"],
        "ray_fraction_of_codec_limit_n_cores": ray1["store_mb_per_s"] / (codec["mb_per_s"] * n),
        "ray_fraction_of_codec_limit_1_core": ray1["store_mb_per_s"] / codec["mb_per_s"],
        "peak_rss_mb_1x": ray1["peak_rss_mb"], "peak_rss_mb_4x": ray4["peak_rss_mb"],
        "memory_growth_4x": ray4["peak_rss_mb"] / ray1["peak_rss_mb"],
    }
    if generator_available("pastis-hd"):
        rawp = os.path.join(args.work, f"pastis-{args.pastis_tiles}")
        report["generate_seconds"]["pastis"] = ensure_sample("pastis-hd", rawp, args.pastis_tiles)
        bp = dir_bytes(rawp)
        pl = run("pastis-local", "pastis-hd", rawp, bp, "local", tag="pastis")
        pr = run("pastis-ray", "pastis-hd", rawp, bp, "ray", tag="pastis")
        pc = codec_limit(os.path.join(out, "pastis-local", "pastis-hd.zarr"))
        report["codec_limit_pastis"] = {**pc, "mb_per_s_n_cores": pc["mb_per_s"] * n}
        report["pastis"] = {"ray_vs_local": pl["seconds"] / pr["seconds"],
                            "ray_fraction_of_codec_limit_n_cores": pr["store_mb_per_s"] / (pc["mb_per_s"] * n)}
    else:
        report["pastis"] = {"skipped": "pipelines/samplegen/pastis.py does not exist"}
    report["machine"]["load_avg_end"] = os.getloadavg()

    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write(markdown(report))
    print(markdown(report))
    return 0


def markdown(rep: dict) -> str:
    m = rep["machine"]
    lines = ["# Ingest benchmark", "",
             f"{m['cpus']} CPUs, Ray with num_cpus={m['num_cpus']}; load average at start {m['load_avg_start'][0]:.1f}, "
             f"at end {m['load_avg_end'][0]:.1f} (other jobs share this machine; treat ratios as the signal).", "",
             "| run | tiles | seconds | tiles/s | store MB/s | raw MB/s | peak RSS MB |", "|---|---|---|---|---|---|---|"]
    for r in rep["runs"]:
        lines.append(f"| {r['name']} | {r['tiles']} | {r['seconds']:.2f} | {r['tiles_per_s']:.1f} | "
                     f"{r['store_mb_per_s']:.1f} | {r['raw_mb_per_s']:.1f} | {r['peak_rss_mb']:.0f} |")
    p = rep["planted"]
    c = rep["codec_limit_planted"]
    lines += ["", "## PLANTED", "",
              f"- Ray Data vs single-process loop: **{p['ray_vs_local']:.2f}x**",
              f"- codec limit (blosc-lz4 + shuffle, whole shards): {c['mb_per_s']:.0f} MB/s on one core, "
              f"{c['mb_per_s_n_cores']:.0f} MB/s on {m['num_cpus']} (compression ratio {c['compression_ratio']:.2f}); "
              f"the Ray ingest reaches **{100 * p['ray_fraction_of_codec_limit_n_cores']:.0f}%** of the "
              f"{m['num_cpus']}-core limit ({100 * p['ray_fraction_of_codec_limit_1_core']:.0f}% of one core's)",
              f"- peak RSS (driver + Ray processes): {p['peak_rss_mb_1x']:.0f} MB at 1x, {p['peak_rss_mb_4x']:.0f} MB "
              f"at 4x (x{p['memory_growth_4x']:.2f})"]
    if "before_after" in rep:
        ba = rep["before_after"]
        lines.append(f"- before/after the whole-shard writer (zarr's generic writer -> `encode_shard`): "
                     f"local {ba['local_speedup']:.2f}x faster, Ray {ba['ray_speedup']:.2f}x faster")
    lines += ["", "Compressors on the PLANTED S2 tiles (one tile per call, one core):", "",
              "| codec | encode MB/s | decode MB/s | ratio |", "|---|---|---|---|"]
    for r in rep["compressors_planted_s2"]:
        lines.append(f"| {r['codec']} | {r['encode_mb_per_s']:.0f} | {r['decode_mb_per_s']:.0f} | {r['ratio']:.2f} |")
    lines += ["", "## PASTIS-HD", ""]
    if "skipped" in rep["pastis"]:
        lines.append(f"skipped: {rep['pastis']['skipped']}")
    else:
        pc = rep["codec_limit_pastis"]
        lines.append(f"- Ray Data vs single-process loop: **{rep['pastis']['ray_vs_local']:.2f}x**; "
                     f"{100 * rep['pastis']['ray_fraction_of_codec_limit_n_cores']:.0f}% of the "
                     f"{m['num_cpus']}-core codec limit ({pc['mb_per_s']:.0f} MB/s per core, ratio "
                     f"{pc['compression_ratio']:.2f})")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
