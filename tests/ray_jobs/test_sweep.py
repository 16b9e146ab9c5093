"""Sweeps and the paper table (ray_jobs/sweep.py, ray_jobs/paper.py).

The fold rotation, the run list and the table are checked as pure functions; one end-to-end sweep runs
two tiny experiments in-process (a few steps each, the session's Ray instance) and checks the MLflow
parent / child runs in a sqlite store and the table it writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ray_jobs import sweep
from ray_jobs.paper import EXPERIMENTS, RunResult, render_table, summarize

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "finetune"


def test_catalogue_has_the_16_paper_experiments():
    assert len(EXPERIMENTS) == 16
    for name, e in EXPERIMENTS.items():
        assert (CONFIGS / f"{name}.yaml").is_file(), name
        assert e.mode in ("ft", "lp", "lpplus") and name.endswith(f"-{e.mode}")
    assert {e.experiment for e in EXPERIMENTS.values() if e.folds} == {
        "pastis-hd-cls-ft", "pastis-hd-semseg-ft", "pastis-hd-semseg-lp"}
    assert EXPERIMENTS["hls-burn-scars-semseg-lpplus"].mode == "lpplus"


def test_fold_rotation_is_the_official_one():
    assert sweep.parse_folds("1-5") == [1, 2, 3, 4, 5] and sweep.parse_folds("2,4") == [2, 4]
    for bad in ("0", "6", "a", "1-7"):
        with pytest.raises(ValueError):
            sweep.parse_folds(bad)
    assert sweep.fold_splits(1) == (["fold1", "fold2", "fold3"], ["fold4"], ["fold5"])  # the standard split
    assert sweep.fold_splits(3) == (["fold3", "fold4", "fold5"], ["fold1"], ["fold2"])
    tests = []
    for k in range(1, 6):
        train, val, test = sweep.fold_splits(k)
        assert len(set(train + val + test)) == 5  # disjoint, all five folds
        tests += test
    assert sorted(tests) == [f"fold{k}" for k in range(1, 6)]  # every fold is tested once


def test_plan_children_folds_seeds_and_overrides():
    kids = sweep.plan_children(["pastis-hd-semseg-lp", "planted-cls-ft"], [2, 5], 2, ["model.size=tiny"], "sw",
                               "exp")
    assert [(c.experiment, c.fold, c.seed) for c in kids] == [
        ("pastis-hd-semseg-lp", 2, 32), ("pastis-hd-semseg-lp", 2, 33), ("pastis-hd-semseg-lp", 5, 32),
        ("pastis-hd-semseg-lp", 5, 33), ("planted-cls-ft", None, 32), ("planted-cls-ft", None, 33)]
    c = kids[0]
    assert c.name == "sw-pastis-hd-semseg-lp-f2-s32" and c.overrides[0] == "model.size=tiny"
    assert {"data.datasets.0.split=[fold2,fold3,fold4]", "data.datasets.0.val_split=[fold5]",
            "eval.test_split=[fold1]", "seed=32", "mlflow.experiment=exp"} <= set(c.overrides)
    assert c.entry.metric == "miou_paper" and kids[-1].entry.metric == "f1_macro_paper"
    # a scoped --set reaches the matching experiments only
    kids = sweep.plan_children(["hls-burn-scars-semseg-ft", "planted-cls-ft"], [1], 1,
                               ["hls-*:data.datasets.0.crop={hls: 128}", "model.size=tiny"], "sw", "exp")
    assert "data.datasets.0.crop={hls: 128}" in kids[0].overrides and "model.size=tiny" in kids[0].overrides
    assert not any("crop" in o for o in kids[1].overrides) and "model.size=tiny" in kids[1].overrides
    assert sweep.scoped(["mlflow.tracking_uri=sqlite:///x.db"], "a") == ["mlflow.tracking_uri=sqlite:///x.db"]
    with pytest.raises(ValueError, match="unknown experiment"):
        sweep.plan_children(["nope"], [1], 1, [], "sw", "exp")
    assert len(sweep.plan_children(["all"], [1], 1, [], "sw", "exp")) == 16


def test_render_table_ft_beside_lp_with_the_paper_number():
    res = [RunResult("pastis-hd-semseg-ft", 32, k, None, v, "ok") for k, v in ((1, 0.60), (2, 0.62), (3, 0.64))]
    res += [RunResult("pastis-hd-semseg-lp", 32, 1, None, 0.40, "ok"),
            RunResult("pastis-hd-semseg-lp", 32, 2, None, None, "failed (exit 1)"),
            RunResult("hls-burn-scars-semseg-lpplus", 32, None, None, 0.5, "ok")]
    s = summarize(res)
    assert s["pastis-hd-semseg-ft"].mean == pytest.approx(0.62) and s["pastis-hd-semseg-ft"].std == pytest.approx(0.02)
    assert (s["pastis-hd-semseg-lp"].n, s["pastis-hd-semseg-lp"].failed, s["pastis-hd-semseg-lp"].std) == (1, 1, None)
    table = render_table(EXPERIMENTS, s, {"pastis-hd-semseg-ft": 66.5})
    lines = table.splitlines()
    assert lines[0].startswith("| dataset, task | metric | FT (ours) | FT (paper) | LP / LP+ (ours)")
    row = next(x for x in lines if x.startswith("| PASTIS-HD, semantic segmentation (5-fold)"))
    assert "| mIoU | 62.0 ± 2.0 (n=3) | 66.5 | 40.0 (n=1, 1 failed) | n/a |" in row
    assert "| LP+ 50.0 (n=1) | n/a |" in next(x for x in lines if x.startswith("| HLS Burn Scars"))


@pytest.mark.slow
def test_sweep_two_tiny_experiments_in_process(ray_session, sample_stores, tmp_path, no_mlflow_env):
    # a placement group a failed run left behind is released between runs (it would starve the next run)
    pg = ray_session.util.placement_group([{"CPU": 0.01}])
    ray_session.get(pg.ready(), timeout=60)
    sweep._release_leftovers()
    assert ray_session.util.placement_group_table()[pg.id.hex()]["state"] == "REMOVED"

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "out"
    sets = {"data.root": sample_stores, "storage_path": tmp_path / "runs", "mlflow.tracking_uri": uri,
            "train.max_steps": 2, "data.datasets.0.batch_size": 2, "mlflow.log_model": "false",
            "eval.plots": "false", "train.preview": "false"}
    argv = ["--experiments", "planted-cls-ft-tiny,treesatai-ts-cls-lp-tiny", "--name", "tsw",
            "--mlflow-experiment", "sweep-e2e", "--out", str(out),
            "--paper-numbers", str(_numbers(tmp_path))]
    for k, v in sets.items():
        argv += ["--set", f"{k}={v}"]
    assert sweep.main(argv) == 0

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("sweep-e2e")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("anysat.sweep") == "tsw"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    pid = parents[0].info.run_id
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == pid]
    assert sorted(r.data.tags["anysat.sweep.experiment"] for r in children) == [
        "planted-cls-ft-tiny", "treesatai-ts-cls-lp-tiny"]
    assert sorted(r.info.run_name for r in children) == ["tsw-planted-cls-ft-tiny-s32", "tsw-treesatai-ts-cls-lp-tiny-s32"]
    for r in children:
        assert r.info.status == "FINISHED" and r.data.params["data.normalization"] == "anysat"
        arts = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"band_plan.md", "band_plan.json", "config.yaml"} <= arts, arts
    planted = next(r for r in children if "planted" in r.info.run_name)
    value = planted.data.metrics["test/f1_macro"]  # the tiny config's monitored metric

    table = (out / "paper_table.md").read_text()
    assert client.download_artifacts(pid, "paper_table.md", str(tmp_path)) and \
        Path(tmp_path, "paper_table.md").read_text() == table
    row = next(x for x in table.splitlines() if x.startswith("| planted-cls |"))
    assert f"| {100 * value:.1f} (n=1) | 12.3 |" in row
    assert next(x for x in table.splitlines() if x.startswith("| treesatai-ts-cls |")).count("(n=1)") == 1
    results = json.loads((out / "sweep_results.json").read_text())
    assert {r["experiment"] for r in results} == {"planted-cls-ft-tiny", "treesatai-ts-cls-lp-tiny"}
    assert parents[0].data.metrics["planted-cls-ft-tiny/mean"] == pytest.approx(value)


def _numbers(tmp_path: Path) -> Path:
    p = tmp_path / "paper.yaml"
    p.write_text("planted-cls-ft-tiny: 12.3\n")
    return p


def test_ray_jobs_mode_submits_with_absolute_paths(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(sweep.subprocess, "run", lambda cmd, check: calls.append(cmd) or
                        type("R", (), {"returncode": 0})())
    child = sweep.plan_children(["planted-cls-ft"], [1], 1, ["data.root=rel/stores", "storage_path=rel/runs",
                                                             "encoder.uri=rel/pre"], "sw", "exp")[0]
    assert sweep._run_ray_job(child, "http://127.0.0.1:8265") == 0
    cmd = calls[0]
    assert cmd[1:6] == ["job", "submit", "--address", "http://127.0.0.1:8265", "--working-dir"]
    assert cmd[cmd.index("--") + 1:cmd.index("--") + 5] == ["python", "-m", "ray_jobs.finetune", "--config"]
    sets = [cmd[i + 1] for i, x in enumerate(cmd) if x == "--set"]
    cwd = Path.cwd()
    assert f"data.root={cwd / 'rel/stores'}" in sets and f"storage_path={cwd / 'rel/runs'}" in sets
    assert f"encoder.uri={cwd / 'rel/pre'}" in sets and "name=sw-planted-cls-ft-s32" in sets
    assert any(s.startswith("mlflow.tracking_uri=sqlite:////") for s in sets)
