"""Fine-tuning and linear probing on local Ray Train (2 gloo workers) on sample stores built with
the real pipeline, tracked in MLflow; then ``ray_jobs.evaluate`` on the result.

Fits cost tens of seconds each on 2 cores, so assertions are grouped: one short FT fit (Planted, from
scratch: MLflow record, metrics consistent with the logged confusion matrix, evaluation artifacts,
checkpoints, evaluate CLI; that the task learns is shown in ``test_tasks_learn.py``) and one LP fit
(TreeSatAI from a JEPA-format checkpoint's EMA teacher: encoder bit-identical, only the head trained)
followed by a resubmission that resumes it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from pipelines.store_meta import FORMAT_VERSION
from ray_jobs.task import FT_STATE_FILE
from ray_jobs_helpers import REPO

pytestmark = pytest.mark.slow

FT_TINY = REPO / "configs/finetune/planted-cls-ft-tiny.yaml"
LP_TINY = REPO / "configs/finetune/treesatai-ts-cls-lp-tiny.yaml"
PLANTED_TILES = 400  # 250 train / 100 val / 50 test (pipelines/samplegen/planted.py split_sizes)


def _sets(items: dict) -> list[str]:
    out = []
    for k, v in items.items():
        out += ["--set", f"{k}={v}"]
    return out


def _only_run(client, experiment):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def _artifacts(client, run_id, path=None) -> set[str]:
    out = set()
    for a in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, a.path) if a.is_dir else {a.path}
    return out


def _latest_checkpoint(run_dir):
    return sorted(c for c in run_dir.glob("checkpoint_*") if c.is_dir())[-1]


@pytest.fixture(scope="module")
def planted_store(tmp_path_factory):
    """A Planted sample store big enough for a meaningful test split (several shards)."""
    from pipelines.ingest import run_ingest
    from pipelines.samplegen import get_generator

    raw = tmp_path_factory.mktemp("planted-raw")
    out = tmp_path_factory.mktemp("planted-store")
    get_generator("planted")(str(raw), tiles=PLANTED_TILES, seed=0)
    run_ingest("planted", str(raw), str(out), tiles_per_shard=64, executor="local", progress=False)
    return out


def test_ft_planted_from_scratch_mlflow_checkpoints_evaluate(ray_session, planted_store, tmp_path, no_mlflow_env):
    from ray_jobs import evaluate, finetune

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sets = _sets({"name": "ft-planted", "data.root": planted_store, "storage_path": tmp_path / "runs",
                  "mlflow.tracking_uri": uri, "mlflow.experiment": "ft-e2e",
                  # s2 carries the planted class signal; one sensor keeps CPU steps short
                  "data.datasets.planted.sensors": "[s2]", "data.datasets.planted.batch_size": 16,
                  "train.max_steps": 12, "train.log_every": 4, "train.eval_every": 4,
                  "checkpoint.every": 4})
    assert finetune.main(["--config", str(FT_TINY), *sets]) == 0

    client = MlflowClient(uri)
    run = _only_run(client, "ft-e2e")
    assert run.info.status == "FINISHED"
    p, m = run.data.params, run.data.metrics
    assert p["mode"] == "ft" and p["encoder.source"] == "scratch" and p["task.resolved.loss"] == "ce"
    assert p["store.planted.format_version"] == str(FORMAT_VERSION)
    for k in ("train/loss", "train/lr", "val/loss", "val/f1_macro", "val/oa", "test/loss", "test/oa",
              "test/f1_macro", "test/f1_macro_paper", "test/f1_micro", "test/f1_weighted"):
        assert k in m, (k, sorted(m))
    steps = [x.step for x in client.get_metric_history(run.info.run_id, "val/f1_macro")]
    assert steps == [4, 8, 12]
    arts = _artifacts(client, run.info.run_id)
    assert {"config.yaml", "previews/planted.png", "evaluation/test/confusion_matrix.png",
            "evaluation/test/per_class.csv", "evaluation/test/confusion_matrix.csv", "evaluation/test/report.md",
            "model/model_state_dict.pt", "model/task.yaml"} <= arts, arts

    # That the service learns (the predicted PLANTED class tracks the true one, r >= 0.6 over the test
    # tiles) is shown in test_tasks_learn.py with the same task library; here, a short Ray Train run
    # and what it leaves behind: the logged confusion matrix agrees with the logged metrics.
    cm = np.loadtxt(client.download_artifacts(run.info.run_id, "evaluation/test/confusion_matrix.csv",
                                              str(tmp_path)), delimiter=",", dtype=np.int64)
    assert cm.shape == (40, 40) and cm.sum() == 50 == m["test/n_samples"]
    assert m["test/oa"] == pytest.approx(np.trace(cm) / 50)
    assert math.isclose(m["test/f1_micro"], m["test/oa"], abs_tol=1e-9)  # single-label: micro F1 = OA

    # checkpoint: pretraining format + fine-tuning extras (best weights at the best val step)
    ck = _latest_checkpoint(tmp_path / "runs" / "ft-planted")
    state = torch.load(ck / "state.pt", weights_only=True)
    extra = torch.load(ck / FT_STATE_FILE, weights_only=True)
    assert state["step"] == 12 and state["mlflow_run_id"] == run.info.run_id
    assert extra["best"]["step"] in (4, 8, 12) and extra["best_weights"]
    assert extra["best"]["value"] == pytest.approx(max(
        x.value for x in client.get_metric_history(run.info.run_id, "val/f1_macro")))

    # a newer checkpoint folder whose upload a kill interrupted (truncated state.pt) is not in Ray
    # Train's record: evaluate takes the latest recorded checkpoint, not the newest folder
    partial = ck.parent / "checkpoint_9999-12-31_23-59-59.999999"
    partial.mkdir()
    blob = (ck / "state.pt").read_bytes()
    (partial / "state.pt").write_bytes(blob[: len(blob) // 3])

    # evaluate CLI: same numbers from the checkpoint alone, logged into the same MLflow run
    rc = evaluate.main(["--config", str(FT_TINY), *sets])
    assert rc == 0
    run = client.get_run(run.info.run_id)
    assert run.data.tags.get("anysat.evaluated.test") == "best" and run.info.status == "FINISHED"
    hist = client.get_metric_history(run.info.run_id, "test/oa")
    assert len(hist) == 2 and hist[0].value == pytest.approx(hist[1].value, abs=1e-6)


def test_lp_teacher_encoder_bit_identical_then_resume(ray_session, sample_stores, tmp_path, no_mlflow_env):
    from anysat import AnySat
    from ray_jobs import finetune

    # a pretraining checkpoint in the JEPA format: student "encoder" and EMA "teacher" (module.*) differ;
    # the teacher has an extra projector (s1) that fine-tuning must drop
    torch.manual_seed(11)
    teacher = AnySat.from_size("tiny", sensors=["aerial", "s2", "s1-asc", "s1"])
    torch.manual_seed(12)
    student = AnySat.from_size("tiny", sensors=["aerial", "s2", "s1-asc", "s1"])
    pre = tmp_path / "pretrain-run" / "checkpoint_000001"
    pre.mkdir(parents=True)
    torch.save({"model": {"encoder": student.state_dict(),
                          "teacher": {f"module.{k}": v for k, v in teacher.state_dict().items()}},
                "step": 10, "mlflow_run_id": ""}, pre / "state.pt")

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    base = {"name": "lp-tsai", "data.root": sample_stores, "storage_path": tmp_path / "runs",
            "mlflow.tracking_uri": uri, "mlflow.experiment": "lp-e2e", "encoder.source": "checkpoint",
            "encoder.uri": tmp_path / "pretrain-run", "train.log_every": 2, "train.eval_every": 2,
            "checkpoint.every": 2, "mlflow.log_model": False}
    assert finetune.main(["--config", str(LP_TINY), *_sets({**base, "train.max_steps": 4})]) == 0

    ck = _latest_checkpoint(tmp_path / "runs" / "lp-tsai")
    state = torch.load(ck / "state.pt", weights_only=True)
    enc = {k[len("encoder."):]: v for k, v in state["model"]["net"].items() if k.startswith("encoder.")}
    ref = {k: v for k, v in teacher.state_dict().items() if not k.startswith("projector_s1.")}
    assert set(enc) == set(ref)
    assert all(torch.equal(enc[k], ref[k]) for k in ref)  # LP: bit-identical to the EMA teacher
    # only the head is optimised: LayerNorm(256) + Linear(256, 15)
    assert len(state["optimizer"]["state"]) == 4
    client = MlflowClient(uri)
    run = _only_run(client, "lp-e2e")
    assert run.data.params["trainable_parameters"] == str(2 * 256 + 256 * 15 + 15)
    assert run.data.tags["anysat.mode"] == "lp"
    for k in ("train/loss", "val/f1_weighted", "val/f1_macro", "test/f1_weighted", "test/oa"):
        assert k in run.data.metrics, (k, sorted(run.data.metrics))
    assert "evaluation/test/per_class.png" in _artifacts(client, run.info.run_id)

    # resubmitting the same run name with more steps resumes from step 4 into the same MLflow run
    assert finetune.main(["--config", str(LP_TINY), *_sets({**base, "train.max_steps": 6})]) == 0
    run = _only_run(client, "lp-e2e")
    assert run.data.tags.get("anysat.resumed_from_step") == "4" and run.info.status == "FINISHED"
    assert [x.step for x in sorted(client.get_metric_history(run.info.run_id, "train/loss"),
                                   key=lambda x: x.step)] == [2, 4, 6]
    state = torch.load(_latest_checkpoint(tmp_path / "runs" / "lp-tsai") / "state.pt", weights_only=True)
    assert state["step"] == 6
    assert all(torch.equal(state["model"]["net"][f"encoder.{k}"], ref[k]) for k in ref)
