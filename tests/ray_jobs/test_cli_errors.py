"""Every mistake on the command line of the four entrypoints is one ``error:`` line and exit code 2:
malformed YAML (with its line and column), true/false given to a number and vice versa, unparsable
``--set`` values, bad arguments, unusable config files, missing stores, outputs that cannot be
written, missing checkpoints. ``main(argv)`` in process, plus one real process per kind of entrypoint
start-up to check that nothing else reaches stderr."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ray_jobs import embed, evaluate, finetune, pretrain
from ray_jobs_helpers import REPO, TINY

FT_TINY = REPO / "configs/finetune/planted-cls-ft-tiny.yaml"
ENTRYPOINTS = {"pretrain": (pretrain, TINY, []), "finetune": (finetune, FT_TINY, []),
               "evaluate": (evaluate, FT_TINY, []), "embed": (embed, FT_TINY, ["--out", "/nonexistent-out"])}


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def bad_yaml(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ndata:\n  datasets: [planted\n  root: y\n")
    return p


@pytest.mark.parametrize("name", sorted(ENTRYPOINTS))
def test_malformed_yaml_is_one_line_with_position(name, bad_yaml, capsys):
    mod, _, extra = ENTRYPOINTS[name]
    assert mod.main(["--config", str(bad_yaml), *extra]) == 2
    line = _one_error_line(capsys)
    assert line.startswith("error: ") and str(bad_yaml) in line and "line 4, column 7" in line, line


@pytest.mark.parametrize("name", sorted(ENTRYPOINTS))
@pytest.mark.parametrize("override, key, problem", [
    ("train.max_steps=true", "train.max_steps", "not true/false"),
    ("use_gpu=1", "use_gpu", "expected true or false"),
    ("mlflow.enabled='yes'", "mlflow.enabled", "expected true or false"),
    ("data.datasets.0.temporal_dropout=false", "temporal_dropout", "not true/false"),
    ("optim.betas=[0.9", "optim.betas", "cannot parse value"),
    ("train.max_step=3", "train.max_step", "did you mean 'max_steps'"),
])
def test_bad_values_are_one_line(name, override, key, problem, capsys):
    mod, config, extra = ENTRYPOINTS[name]
    assert mod.main(["--config", str(config), "--set", override, *extra]) == 2
    line = _one_error_line(capsys)
    assert key in line and problem in line, line


def test_several_problems_still_one_line(capsys):
    assert pretrain.main(["--config", str(TINY), "--set", "train.max_steps=true", "--set", "num_workers=0",
                          "--set", "bogus=1"]) == 2
    line = _one_error_line(capsys)
    assert "train.max_steps" in line and "num_workers" in line and "unknown key 'bogus'" in line


def test_unusable_config_files(tmp_path, capsys):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"name: \xff\xfe\x00\x01")
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    for path, problem in ((tmp_path, "is not a file"), (tmp_path / "missing.yaml", "not found"),
                          (binary, "not a text (UTF-8) file"), (listing, "top level must be a mapping")):
        assert finetune.main(["--config", str(path)]) == 2
        line = _one_error_line(capsys)
        assert problem in line, line


@pytest.mark.parametrize("argv, problem", [
    (["pretrain"], "the following arguments are required: --config"),
    (["embed", "--config", "x.yaml", "--out", "o", "--batch-size", "0"], "--batch-size: must be > 0"),
    (["embed", "--config", "x.yaml", "--out", "o", "--concurrency", "-2"], "--concurrency: must be > 0"),
    (["embed", "--config", "x.yaml", "--out", "o", "--num-cpus", "abc"], "expected a float > 0"),
    (["evaluate", "--config", "x.yaml", "--weights", "worst"], "invalid choice: 'worst'"),
])
def test_bad_arguments_are_one_line(argv, problem, capsys):
    mod = ENTRYPOINTS[argv[0]][0]
    with pytest.raises(SystemExit) as e:
        mod.main(argv[1:])
    assert e.value.code == 2
    line = _one_error_line(capsys)
    assert problem in line and line.endswith("(see --help)"), line


def test_missing_stores_unwritable_outputs_missing_checkpoint(sample_stores, tmp_path, capsys, no_mlflow_env):
    assert pretrain.main(["--config", str(TINY), "--set", f"data.root={tmp_path / 'nowhere'}"]) == 2
    line = _one_error_line(capsys)
    assert "missing stores" in line and "planted:" in line and "treesatai-ts:" in line
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    sets = ["--set", f"data.root={sample_stores}", "--set", f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"]
    for mod, config in ((pretrain, TINY), (finetune, FT_TINY)):
        assert mod.main(["--config", str(config), *sets, "--set", f"storage_path={a_file}"]) == 2
        line = _one_error_line(capsys)
        assert f"storage_path {a_file}" in line and "is not a folder" in line, line
        assert mod.main(["--config", str(config), *sets, "--set", f"storage_path={tmp_path}/runs",
                         "--set", f"mlflow.tracking_uri=sqlite:///{a_file}/sub/mlflow.db"]) == 2
        line = _one_error_line(capsys)
        assert "mlflow.tracking_uri" in line and "is not a folder" in line, line
    assert evaluate.main(["--config", str(FT_TINY), *sets, "--checkpoint", str(tmp_path / "no-run")]) == 2
    line = _one_error_line(capsys)
    assert "no state.pt under" in line, line
    assert not (tmp_path / "mlflow.db").exists()  # nothing was started


@pytest.mark.slow
def test_real_process_stderr_is_one_line(bad_yaml):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    for module in ("ray_jobs.finetune", "ray_jobs.embed"):
        r = subprocess.run([sys.executable, "-m", module, "--config", str(bad_yaml), "--out", "o"]
                           if module.endswith("embed") else [sys.executable, "-m", module, "--config", str(bad_yaml)],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 2
        assert r.stderr.strip().count("\n") == 0 and "invalid YAML at line 4, column 7" in r.stderr, r.stderr
