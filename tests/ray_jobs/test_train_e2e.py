"""Real Ray Train fits of tiny JEPA on two sample stores with different sensor sets.

Each fit costs tens of seconds on 2 cores, so the assertions are grouped: one fit checks DDP steps,
S3 stores + S3 checkpoints and the MLflow record; one checks fault injection + resume and then a
resubmission of the same run name. The ``ray job submit`` path is in test_job_submit.py.
"""

from __future__ import annotations

import json

import pytest
import torch
from mlflow import MlflowClient

from pipelines.store_meta import FORMAT_VERSION
from ray_jobs import pretrain
from ray_jobs.batching import step_batch_size
from ray_jobs.config import load_config, resolve_paths
from ray_jobs.plan import resolve_plans
from ray_jobs.runtime import CHECKPOINT_FILE, load_checkpoint_state
from ray_jobs.schedule import Schedule
from ray_jobs_helpers import REPO, TINY, both_datasets_seed, tiny_overrides

FT_TINY = REPO / "configs/finetune/planted-cls-ft-tiny.yaml"
TOKENS = 81

pytestmark = pytest.mark.slow


def _sets(items: list[str]) -> list[str]:
    out = []
    for it in items:
        out += ["--set", it]
    return out


def _only_run(client: MlflowClient, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def _history_steps(client, run_id, key="train/loss") -> list[int]:
    return [m.step for m in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))]


def _artifacts(client, run_id, path=None) -> set[str]:
    out = set()
    for a in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, a.path) if a.is_dir else {a.path}
    return out


def test_ddp_fit_s3_stores_s3_checkpoints_mlflow(ray_session, s3_server, s3_stores, tmp_path, no_mlflow_env):
    so = json.dumps(s3_server["storage_options"])
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    seed = both_datasets_seed(4)
    rc = pretrain.main(["--config", str(TINY)] + _sets(tiny_overrides(**{
        "name": "ddp-s3", "seed": seed, "num_workers": 2,
        "data.root": s3_stores, "data.storage_options": so,
        "storage_path": f"s3://{s3_server['bucket']}/runs", "storage_options": so,
        "mlflow.tracking_uri": uri, "mlflow.experiment": "e2e-ddp",
        "mlflow.registered_model_name": "anysat-e2e"})))
    assert rc == 0

    client = MlflowClient(uri)
    run = _only_run(client, "e2e-ddp")
    assert run.info.status == "FINISHED"
    # params: flattened config + store versions + git commit, never credentials
    p = run.data.params
    assert p["train.max_steps"] == "4" and p["num_workers"] == "2" and p["model.size"] == "tiny"
    assert p["store.planted.format_version"] == str(FORMAT_VERSION)
    assert p["store.treesatai-ts.sensors"] == "aerial,s2,s1-asc"
    assert "git_commit" in p
    assert not [k for k in p if "secret" in k or k.endswith(".key")]
    assert "testing" not in json.dumps(p)  # the (dummy) S3 credentials
    # metrics: every loss term, lr, momentum, throughput per dataset, validation
    m = run.data.metrics
    for k in ("train/loss", "train/loss_pred", "train/loss_con", "train/lr", "train/ema_momentum",
              "train/samples_per_s", "train/planted/samples_per_s", "train/treesatai-ts/tokens_per_s",
              "val/loss", "val/loss_pred", "val/loss_con"):
        assert k in m, (k, sorted(m))
    assert _history_steps(client, run.info.run_id) == [2, 4]
    mom = [x.value for x in client.get_metric_history(run.info.run_id, "train/ema_momentum")]
    assert 0.996 <= mom[0] < mom[-1] <= 1.0
    arts = _artifacts(client, run.info.run_id)
    assert {"config.yaml", "previews/planted.png", "previews/treesatai-ts.png",
            "encoder/encoder_state_dict.pt"} <= arts, arts
    assert client.search_model_versions("name='anysat-e2e'")

    # checkpoints on S3: kept ones only, plain tensors, full training state
    import s3fs

    fs = s3fs.S3FileSystem(**s3_server["storage_options"])
    ckpts = sorted(c for c in fs.glob(f"{s3_server['bucket']}/runs/ddp-s3/checkpoint_*") if fs.isdir(c))
    assert 1 <= len(ckpts) <= 2  # checkpoint.num_to_keep = 2
    local = tmp_path / "state.pt"
    fs.get(f"{ckpts[-1]}/{CHECKPOINT_FILE}", str(local))
    state = load_checkpoint_state(local)  # torch.load(weights_only=True)
    assert state["step"] == 4 and state["mlflow_run_id"] == run.info.run_id
    assert set(state["model"]) >= {"encoder", "predictor", "teacher"}
    assert state["schedule"]["seed"] == seed and sum(state["consumed"].values()) == 4
    assert "state" in state["optimizer"] and state["scheduler"]["last_epoch"] == 4
    # DDP kept the replicas identical and the teacher moved away from the student
    enc, teacher = state["model"]["encoder"], state["model"]["teacher"]
    k = next(k for k in enc if k.startswith("spatial_encoder") and enc[k].dtype.is_floating_point)
    assert not torch.equal(enc[k], teacher[f"module.{k}"])

    # the registered encoder is the EMA teacher of the final step (not the student), and a fine-tuning
    # config with encoder.source=mlflow loads it by default (encoder.weights = teacher)
    sd = torch.load(client.download_artifacts(run.info.run_id, "encoder/encoder_state_dict.pt", str(tmp_path)),
                    weights_only=True)
    assert set(sd) == {t[len("module."):] for t in teacher}
    assert all(torch.equal(sd[t], teacher[f"module.{t}"]) for t in sd) and not torch.equal(sd[k], enc[k])
    from ray_jobs.config import load_config
    from ray_jobs.finetune_config import FinetuneConfig
    from ray_jobs.task import load_encoder

    ft = load_config(FT_TINY, ["encoder.source=mlflow", "encoder.uri=models:/anysat-e2e/1",
                               f"mlflow.tracking_uri={uri}"], cls=FinetuneConfig)
    loaded = load_encoder(ft, ["s2"]).state_dict()
    assert loaded and all(torch.equal(v, teacher[f"module.{t}"]) for t, v in loaded.items())
    with pytest.raises(ValueError, match="holds the teacher encoder, not the student"):
        load_encoder(ft.model_copy(update={"encoder": ft.encoder.model_copy(update={"weights": "student"})}), ["s2"])


def test_fault_injection_resumes_then_resubmit_resumes(ray_session, sample_stores, tmp_path, no_mlflow_env):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    marker = tmp_path / "killed.marker"
    base = tiny_overrides(**{
        "name": "faulty", "seed": both_datasets_seed(3), "num_workers": 2, "data.root": str(sample_stores),
        "storage_path": str(tmp_path / "runs"), "mlflow.tracking_uri": uri, "mlflow.experiment": "e2e-fault",
        "mlflow.log_model": False, "train.eval_every": 0, "train.max_failures": 1,
        # a token budget: PLANTED 1 sample at 30 m (65 tokens), TreeSatAI-TS 1 at 10 m and 3 at 20 m (108 and 27
        # tokens), not the fixed 4 / 2; small, because a TreeSatAI-TS sample's aerial image is slow on CPU
        "data.tokens_per_batch": TOKENS})
    fault = "{rank: 1, step: 3, marker: %s}" % marker
    rc = pretrain.main(["--config", str(TINY)] + _sets(base + ["train.max_steps=6",
                                                               f"train.fault_injection={fault}"]))
    assert rc == 0
    assert marker.exists()  # rank 1 did SIGKILL itself at step 3 (after the step-2 checkpoint)
    client = MlflowClient(uri)
    run = _only_run(client, "e2e-fault")  # the restarted worker group logged into the same run
    assert run.data.tags.get("anysat.resumed_from_step") == "2"
    assert _history_steps(client, run.info.run_id) == [2, 4, 6]  # no duplicated steps
    ckpts = sorted(c for c in (tmp_path / "runs" / "faulty").glob("checkpoint_*") if c.is_dir())
    assert load_checkpoint_state(ckpts[-1] / CHECKPOINT_FILE)["step"] == 6

    # resubmitting the same run name continues from step 6 into the same MLflow run
    rc = pretrain.main(["--config", str(TINY)] + _sets(base + ["train.max_steps=8"]))
    assert rc == 0
    run = _only_run(client, "e2e-fault")
    assert run.data.tags.get("anysat.resumed_from_step") == "6"
    assert _history_steps(client, run.info.run_id) == [2, 4, 6, 8]
    assert run.info.status == "FINISHED"
    # every step took the budget's batch size for its draw, across the kill and the resubmission: the tiles
    # each rank consumed are exactly the sums the schedule gives, and the budget changed the batch sizes
    state = load_checkpoint_state(sorted(c for c in (tmp_path / "runs" / "faulty").glob("checkpoint_*")
                                         if c.is_dir())[-1] / CHECKPOINT_FILE)
    cfg = resolve_paths(load_config(TINY, base))
    plans = resolve_plans(cfg)
    schedule = Schedule(cfg.seed, {n: (p.weight, p.patch_sizes_m) for n, p in plans.items()})
    want = dict.fromkeys(plans, 0)
    for entry in map(schedule.at, range(8)):
        want[entry.dataset] += step_batch_size(plans[entry.dataset], entry.patch_size_m, TOKENS)
    assert state["consumed_tiles"] == want
    assert want != {n: c * plans[n].batch_size for n, c in state["consumed"].items()}
