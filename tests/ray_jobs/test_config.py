"""Config parsing, --set overrides and error messages (fast, no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ray_jobs.config import (ConfigError, PretrainConfig, TrainConfig, apply_overrides, check_stores, load_config,
                             parse_override, resolve_paths)
from ray_jobs.tracking import flatten, is_secret

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs/pretrain/geoplex-tiny.yaml"
BASE = ROOT / "configs/pretrain/geoplex-base.yaml"


def test_shipped_configs_parse():
    tiny = load_config(TINY)
    assert isinstance(tiny, PretrainConfig)
    assert tiny.model.size == "tiny" and tiny.num_workers == 2 and not tiny.use_gpu
    assert [d.name for d in tiny.data.datasets] == ["planted", "treesatai-ts"]
    base = load_config(BASE)
    assert base.model.size == "base"
    assert {d.name: (d.batch_size, d.weight) for d in base.data.datasets} == {
        "treesatai-ts": (128, 1.0), "pastis-hd": (1, 1.0), "flair": (32, 1.0),
        "planted": (256, 2.0), "s2naip-urban": (2, 4.0)}
    assert base.optim.lr == 5e-5 and base.optim.weight_decay == 0.05
    assert base.jepa.ema == (0.996, 1.0) and base.jepa.temperature == 0.1
    pastis = next(d for d in base.data.datasets if d.name == "pastis-hd")
    assert pastis.temporal_dropout == 20 and pastis.date_origin == "2018-09-01"
    assert pastis.patch_sizes_m == [40, 80, 160]


def test_overrides_types_and_paths():
    cfg = load_config(TINY, ["train.max_steps=7", "storage_path=s3://bucket/runs", "optim.lr=1e-3",
                             "optim.betas=[0.8, 0.9]", "mlflow.registered_model_name=null",
                             "data.datasets.planted.batch_size=3", "data.datasets.1.weight=5",
                             "model.kwargs.attention=tokens", "train.grad_clip=0.5"])
    assert cfg.train.max_steps == 7
    assert cfg.storage_path == "s3://bucket/runs"
    assert cfg.optim.lr == 1e-3 and cfg.optim.betas == (0.8, 0.9)
    assert cfg.mlflow.registered_model_name is None
    assert cfg.data.datasets[0].batch_size == 3 and cfg.data.datasets[1].weight == 5.0
    assert cfg.model.kwargs == {"attention": "tokens"}
    # later --set wins
    assert load_config(TINY, ["seed=1", "seed=2"]).seed == 2


def test_parse_override():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a=x=y") == (["a"], "x=y")
    assert parse_override("a=true") == (["a"], True)
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("novalue")
    with pytest.raises(ConfigError, match="bad key"):
        parse_override("a..b=1")


def test_unknown_key_errors_name_the_key():
    with pytest.raises(ConfigError) as e:
        load_config(TINY, ["train.max_step=5"])
    assert "unknown key 'train.max_step'" in str(e.value) and "did you mean 'max_steps'" in str(e.value)
    with pytest.raises(ConfigError, match="unknown key 'data.datasets.0.batchsize'"):
        load_config(TINY, ["data.datasets.0.batchsize=5"])
    with pytest.raises(ConfigError, match="unknown key 'bogus'"):
        load_config(TINY, ["bogus=1"])
    with pytest.raises(ConfigError, match="no list entry named 'nope'"):
        load_config(TINY, ["data.datasets.nope.batch_size=1"])
    with pytest.raises(ConfigError, match="index 9 out of range"):
        load_config(TINY, ["data.datasets.9.batch_size=1"])


def test_value_errors():
    with pytest.raises(ConfigError, match="train.max_steps"):
        load_config(TINY, ["train.max_steps=abc"])
    with pytest.raises(ConfigError, match="multiples of 10"):
        load_config(TINY, ["data.datasets.planted.patch_sizes_m=[25]"])
    with pytest.raises(ConfigError, match="multiple of"):
        load_config(TINY, ["checkpoint.every=7"])
    with pytest.raises(ConfigError, match="missing required key 'data'"):
        load_config(raw={"name": "x"})
    with pytest.raises(ConfigError, match="duplicate"):
        load_config(raw={"data": {"datasets": [{"name": "a"}, {"name": "a"}]}})
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent.yaml")


def test_generic_base_is_reusable():
    # the fine-tuning entrypoint subclasses TrainConfig: the jepa section is pretraining-only
    cfg = load_config(raw={"data": {"datasets": [{"name": "planted"}]}}, cls=TrainConfig)
    assert not hasattr(cfg, "jepa")
    with pytest.raises(ConfigError, match="unknown key 'jepa'"):
        load_config(raw={"data": {"datasets": [{"name": "planted"}]}, "jepa": {}}, cls=TrainConfig)


def test_resolve_paths_and_missing_stores(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = resolve_paths(load_config(TINY, ["data.root=stores", "storage_path=runs"]), base=tmp_path)
    assert cfg.data.root == str(tmp_path / "stores") and cfg.storage_path == str(tmp_path / "runs")
    assert cfg.mlflow.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_paths(load_config(TINY), base=tmp_path).mlflow.tracking_uri == "http://127.0.0.1:5000"
    s3 = resolve_paths(load_config(TINY, ["storage_path=s3://b/r", "data.root=s3://b/stores"]), base=tmp_path)
    assert s3.storage_path == "s3://b/r" and s3.data.root == "s3://b/stores"
    (tmp_path / "stores" / "planted.zarr").mkdir(parents=True)
    (tmp_path / "stores" / "planted.zarr" / "zarr.json").write_text("{}")
    with pytest.raises(ConfigError) as e:
        check_stores(cfg)
    assert "treesatai-ts" in str(e.value) and "planted:" not in str(e.value)


def test_flatten_and_secret_filter():
    cfg = load_config(TINY, ["data.storage_options={key: abc, secret: xyz, endpoint_url: http://h}"])
    flat = flatten(cfg)
    assert flat["train.max_steps"] == 200
    assert flat["data.datasets.planted.batch_size"] == 8
    assert "data.storage_options.key" in flat
    kept = {k for k in flat if not is_secret(k)}
    assert "data.storage_options.key" not in kept and "data.storage_options.secret" not in kept
    assert "data.storage_options.endpoint_url" in kept and "checkpoint.num_to_keep" in kept
    assert is_secret("AWS_SECRET_ACCESS_KEY") and is_secret("api_token") and is_secret("db_password")


def test_apply_overrides_creates_missing_mappings():
    raw = apply_overrides({}, ["a.b.c=1"])
    assert raw == {"a": {"b": {"c": 1}}}
