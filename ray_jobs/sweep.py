"""Run the paper's downstream experiments over seeds and folds and put the results beside the paper's.

    python -m ray_jobs.sweep --experiments <names|all> [--folds 1-5] [--seeds 3] [--set key=value ...]
                             [--in-process | --ray-jobs [--address http://127.0.0.1:8265]]
                             [--name sweep] [--mlflow-experiment anysat-sweep] [--out sweeps/<name>]
                             [--paper-numbers numbers.yaml] [--dry-run]

``--experiments``: config names of ``configs/finetune/`` (comma-separated; ``all`` = the 16 paper
experiments of :data:`ray_jobs.paper.EXPERIMENTS`) or paths to config files. Each experiment runs once
per seed (``--seeds N``: the config's seed, +1, ... +N-1) and, for PASTIS-HD, once per fold of the
5-fold protocol (``--folds``, default ``1-5``). ``--set`` items apply to every run (``--set
train.max_steps=4 --set model.size=tiny``; ``data.datasets.0.<key>`` addresses the run's one dataset);
``--set '<experiment glob>:key=value'`` applies to the matching experiments only (``--set
'hls-burn-scars-*:data.datasets.0.crop={hls: 128}'``).

PASTIS-HD folds rotate as in the official PASTIS benchmark: fold ``k`` trains on folds ``k, k+1, k+2``,
validates on ``k+3`` and tests on ``k+4`` (modulo 5, numbered from 1), so fold 1 is the standard
split (train 1-3, val 4, test 5) and every fold is tested once. The normalisation statistics follow
the training folds (``data.normalization: anysat`` averages the per-fold statistics of the store).

Runs: ``--in-process`` (default) calls the fine-tuning library in this process (``ray_jobs.finetune``:
training, then the test split with the best validation weights; ``ray_jobs.evaluate`` fills in a test
metric a resumed run did not log), on a local Ray instance or the cluster ``RAY_ADDRESS`` names;
``--ray-jobs`` submits each run with ``ray job submit`` (paths made absolute) and waits for it.

MLflow: one parent run (``--mlflow-experiment``, tag ``anysat.sweep``) and the runs as its children
(tag ``mlflow.parentRunId``, so the UI nests them; ``anysat.sweep.*`` tags give experiment, seed and
fold). At the end the parent gets the paper-shaped table (``paper_table.md``: per experiment our mean
± std over seeds and folds of the paper's metric, FT beside LP / LP+, the paper's number beside ours),
every run's result (``sweep_results.json``) and ``<experiment>/mean|std`` metrics; the same files go
to ``--out`` and the table is printed. Exit code 1 if any run failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import ray
import yaml
from mlflow import MlflowClient
from ray.util import placement_group_table, remove_placement_group
from ray.util.placement_group import PlacementGroup

from ray_jobs import evaluate, finetune
from ray_jobs.cli import USER_ERRORS, script, setup_logging
from ray_jobs.config import load_config, resolve_paths
from ray_jobs.finetune_config import DEFAULT_MONITOR, FinetuneConfig, resolve_task
from ray_jobs.paper import EXPERIMENTS, PaperEntry, RunResult, entry_for, render_table, summarize
from ray_jobs.tracking import RUN_KEY_TAG, artifact_location, safe_params

__all__ = ["main", "Child", "parse_folds", "fold_splits", "plan_children", "scoped"]

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "finetune"
PARENT_TAG = "anysat.sweep"


@dataclass(frozen=True)
class Child:
    """One run of the sweep."""

    experiment: str
    config: str
    entry: PaperEntry
    seed: int
    fold: int | None
    name: str
    overrides: tuple[str, ...]
    """The user's ``--set`` items, then the sweep's (name, seed, MLflow experiment, fold splits)."""


def parse_folds(text: str) -> list[int]:
    """``"1-5"``, ``"2"``, ``"1,3,5"`` -> fold numbers in 1..5."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            rng = range(int(lo), int(hi or lo) + 1)
        except ValueError:
            raise ValueError(f"--folds: expected e.g. 1-5 or 1,3, got {text!r}") from None
        out += [k for k in rng if k not in out]
    if not out or any(not 1 <= k <= 5 for k in out):
        raise ValueError(f"--folds: folds are 1..5, got {text!r}")
    return out


def fold_splits(k: int) -> tuple[list[str], list[str], list[str]]:
    """(train, val, test) stored splits of PASTIS fold ``k`` (official rotation, module docstring)."""
    f = [f"fold{(k - 1 + i) % 5 + 1}" for i in range(5)]
    return f[:3], [f[3]], [f[4]]


def _config_path(name: str) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p.resolve()
    p = CONFIGS / f"{name}.yaml"
    if not p.is_file():
        known = sorted(q.stem for q in CONFIGS.glob("*.yaml"))
        raise ValueError(f"unknown experiment {name!r}: no {p} (configs: {', '.join(known)})")
    return p


def _load(path: Path, overrides: list[str]) -> FinetuneConfig:
    return resolve_paths(load_config(path, overrides, cls=FinetuneConfig))


def scoped(overrides: list[str], experiment: str) -> list[str]:
    """The ``--set`` items that apply to ``experiment``: plain ``key=value`` ones, and ``glob:key=value``
    ones whose glob matches it (a ``:`` before the first ``=`` marks the scope)."""
    out = []
    for item in overrides:
        head = item.partition("=")[0]
        if ":" not in head:
            out.append(item)
            continue
        pattern, _, rest = item.partition(":")
        if fnmatch.fnmatchcase(experiment, pattern):
            out.append(rest)
    return out


def plan_children(experiments: list[str], folds: list[int], seeds: int, overrides: list[str], sweep: str,
                  mlflow_experiment: str) -> list[Child]:
    """Every (experiment, fold, seed) run with its overrides; configs are validated here."""
    names = list(EXPERIMENTS) if experiments == ["all"] else experiments
    children = []
    for name in names:
        path = _config_path(name)
        exp = path.stem
        mine = scoped(overrides, exp)
        cfg = _load(path, mine)
        entry = entry_for(exp, cfg.dataset.name, cfg.mode,
                          cfg.task.monitor or DEFAULT_MONITOR[resolve_task(cfg).kind])
        fold_list: list[int | None] = list(folds) if entry.folds or cfg.dataset.name == "pastis-hd" else [None]
        for fold in fold_list:
            for i in range(seeds):
                seed = cfg.seed + i
                run = f"{sweep}-{exp}" + (f"-f{fold}" if fold else "") + f"-s{seed}"
                extra = [f"name={run}", f"seed={seed}", f"mlflow.experiment={mlflow_experiment}"]
                if fold:
                    train, val, test = fold_splits(fold)
                    extra += [f"data.datasets.0.split=[{','.join(train)}]", f"data.datasets.0.val_split=[{val[0]}]",
                              f"eval.test_split=[{test[0]}]"]
                child = Child(exp, str(path), entry, seed, fold, run, tuple(mine) + tuple(extra))
                _load(path, list(child.overrides))  # a bad --set fails before anything runs
                children.append(child)
    return children


# ------------------------------------------------------------------------------------------- runs
def _sets(items: tuple[str, ...] | list[str]) -> list[str]:
    out: list[str] = []
    for s in items:
        out += ["--set", s]
    return out


def _run_in_process(child: Child) -> int:
    return finetune.main(["--config", child.config, *_sets(child.overrides)])


def _run_ray_job(child: Child, address: str | None) -> int:
    """``ray job submit`` of the fine-tuning entrypoint, with every local path made absolute (a job
    runs in a copy of the working dir)."""
    cfg = _load(Path(child.config), list(child.overrides))
    pinned = [f"data.root={cfg.data.root}", f"storage_path={cfg.storage_path}",
              f"mlflow.tracking_uri={cfg.mlflow.tracking_uri}"]
    if cfg.encoder.uri and "://" not in cfg.encoder.uri:
        pinned.append(f"encoder.uri={Path(cfg.encoder.uri).expanduser().resolve()}")
    config = Path(child.config)
    try:
        config = config.relative_to(Path.cwd())
    except ValueError:
        pass
    ray = Path(sys.executable).with_name("ray")
    cmd = [str(ray) if ray.exists() else "ray", "job", "submit", *(["--address", address] if address else []),
           "--working-dir", ".", "--", "python", "-m", "ray_jobs.finetune", "--config", str(config),
           *_sets(list(child.overrides) + pinned)]
    log.info("submitting %s", " ".join(cmd))
    return subprocess.run(cmd, check=False).returncode


def _release_leftovers() -> None:
    """Remove placement groups left behind by a failed run, on a Ray instance this process started.

    A failed Ray Train run can leave its placement group reserved (seen when several Ray instances
    run on one machine: Ray's clean-up actor cannot tell which one to ask), holding the CPUs the next
    run's read tasks need, which then wait forever. The sweep runs one run at a time, so between two
    runs every placement group of its own local instance is a leftover; a cluster it merely joined
    (``RAY_ADDRESS``) is left alone."""
    if not ray.is_initialized() or getattr(ray._private.worker, "_global_node", None) is None:
        return
    for pg_id, info in placement_group_table().items():
        if info.get("state") in ("CREATED", "PENDING", "RESCHEDULING"):
            log.warning("removing placement group %s left by a finished run", pg_id)
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id))))


def _find_run(client, experiment_id: str, cfg: FinetuneConfig):
    key = f"{cfg.storage_path.rstrip('/')}/{cfg.name}"
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def _result(client, experiment_id: str, child: Child, parent_id: str, rc: int) -> RunResult:
    """Tag the child's MLflow run as the parent's child and read its test metric (evaluating the
    checkpoint when a resumed run logged none)."""
    cfg = _load(Path(child.config), list(child.overrides))
    run = _find_run(client, experiment_id, cfg)
    if run is None:
        return RunResult(child.experiment, child.seed, child.fold, None, None, f"no MLflow run (exit {rc})")
    rid = run.info.run_id
    tags = {"mlflow.parentRunId": parent_id, PARENT_TAG: parent_id, "anysat.sweep.experiment": child.experiment,
            "anysat.sweep.seed": str(child.seed), "anysat.sweep.fold": str(child.fold or "")}
    for k, v in tags.items():
        client.set_tag(rid, k, v)
    key = f"test/{child.entry.metric}"
    if rc == 0 and key not in run.data.metrics:
        evaluate.main(["--config", child.config, *_sets(child.overrides)])
        run = client.get_run(rid)
    value = run.data.metrics.get(key)
    status = "ok" if rc == 0 and value is not None else f"failed (exit {rc})" if rc else f"no {key}"
    return RunResult(child.experiment, child.seed, child.fold, rid, value, status)


# ------------------------------------------------------------------------------------------ main
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ray_jobs.sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--experiments", required=True,
                   help="comma-separated config names of configs/finetune (or paths); 'all' = the 16 paper experiments")
    p.add_argument("--folds", default="1-5", help="PASTIS-HD folds of the 5-fold protocol (default 1-5)")
    p.add_argument("--seeds", type=int, default=1, help="runs per experiment and fold (seeds config, +1, ...)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="[GLOB:]KEY=VALUE",
                   help="override a config key in every run, or in the experiments matching GLOB (repeatable)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--in-process", dest="ray_jobs", action="store_false", help="run in this process (default)")
    how.add_argument("--ray-jobs", dest="ray_jobs", action="store_true", help="submit each run with ray job submit")
    p.set_defaults(ray_jobs=False)
    p.add_argument("--address", default=None, help="--ray-jobs: the dashboard address (default: ray's own)")
    p.add_argument("--name", default="sweep", help="sweep name: parent run name and prefix of the run names")
    p.add_argument("--mlflow-experiment", default="anysat-sweep", help="MLflow experiment of parent and runs")
    p.add_argument("--out", default=None, help="folder for paper_table.md and sweep_results.json "
                                               "(default sweeps/<name>)")
    p.add_argument("--paper-numbers", default=None, help="YAML/JSON {experiment: paper value in percent}")
    p.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    return p


def _paper_numbers(path: str | None) -> dict[str, float]:
    if not path:
        return {}
    doc = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(doc, dict):
        raise ValueError(f"--paper-numbers {path}: expected a mapping experiment -> value")
    return {str(k): float(v) for k, v in doc.items() if v is not None}


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = _parser().parse_args(argv)
    try:
        if args.seeds < 1:
            raise ValueError("--seeds must be >= 1")
        experiments = [e.strip() for e in args.experiments.split(",") if e.strip()]
        children = plan_children(experiments, parse_folds(args.folds), args.seeds, args.overrides, args.name,
                                 args.mlflow_experiment)
        paper = _paper_numbers(args.paper_numbers)
        uri = _load(Path(children[0].config), list(children[0].overrides)).mlflow.tracking_uri
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for i, c in enumerate(children, 1):
        print(f"[{i}/{len(children)}] {c.name}: {c.experiment} seed {c.seed}" + (f" fold {c.fold}" if c.fold else ""))
    if args.dry_run:
        return 0

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(args.mlflow_experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(
        args.mlflow_experiment, artifact_location=artifact_location(uri, args.mlflow_experiment))
    parent = client.create_run(exp_id, run_name=args.name, tags={PARENT_TAG: args.name,
                                                                 "mlflow.source.name": "ray_jobs.sweep"})
    pid = parent.info.run_id
    for k, v in safe_params({"experiments": ",".join(dict.fromkeys(c.experiment for c in children)),
                             "folds": args.folds, "seeds": args.seeds, "runs": len(children),
                             "mode": "ray-jobs" if args.ray_jobs else "in-process",
                             "overrides": " ".join(args.overrides)}).items():
        client.log_param(pid, k, v)
    print(f"MLflow parent run {pid} (experiment {args.mlflow_experiment}) at {uri}")

    results: list[RunResult] = []
    t0 = time.perf_counter()
    for i, c in enumerate(children, 1):
        print(f"[{i}/{len(children)}] running {c.name}", flush=True)
        try:
            rc = _run_ray_job(c, args.address) if args.ray_jobs else _run_in_process(c)
        except Exception as e:  # one broken run must not lose the others' results
            log.exception("%s failed", c.name)
            rc = 1
            print(f"{c.name}: {type(e).__name__}: {e}", file=sys.stderr)
        if not args.ray_jobs:
            _release_leftovers()
        try:
            results.append(_result(client, exp_id, c, pid, rc))
        except Exception as e:  # MLflow trouble reading one run back
            log.exception("%s: reading the result failed", c.name)
            results.append(RunResult(c.experiment, c.seed, c.fold, None, None, f"no result ({type(e).__name__})"))
        print(f"[{i}/{len(children)}] {c.name}: {results[-1].status} "
              f"test/{c.entry.metric} = {results[-1].value}", flush=True)

    entries = {c.experiment: c.entry for c in children}
    summaries = summarize(results)
    table = render_table(entries, summaries, paper)
    out = Path(args.out or f"sweeps/{args.name}")
    out.mkdir(parents=True, exist_ok=True)
    dump = json.dumps([dataclasses.asdict(r) | {"metric": entries[r.experiment].metric} for r in results], indent=1)
    (out / "paper_table.md").write_text(table)
    (out / "sweep_results.json").write_text(dump)
    client.log_text(pid, table, "paper_table.md")
    client.log_text(pid, dump, "sweep_results.json")
    for name, s in summaries.items():
        if s.mean is not None:
            client.log_metric(pid, f"{name}/mean", s.mean)
            if s.std is not None:
                client.log_metric(pid, f"{name}/std", s.std)
    failed = sum(r.status != "ok" for r in results)
    client.set_tag(pid, "anysat.sweep.failed", str(failed))
    client.set_terminated(pid, "FINISHED" if not failed else "FAILED")
    print(f"\n{len(results)} runs in {time.perf_counter() - t0:.0f} s, {failed} failed; parent run {pid}; "
          f"{out / 'paper_table.md'}\n")
    print(table)
    return 1 if failed else 0


if __name__ == "__main__":
    script("ray_jobs.sweep")
