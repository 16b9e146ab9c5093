"""Every fine-tuning experiment builds its task model from weights shaped like the released ``AnySat.pth``.

A state dict with the exact key names and shapes of the released base encoder (``tests/data/
anysat_base_state_dict.json``: 418 tensors, 125.9 M values, all 11 official projectors) is filled with
random values and saved once; then, for every config in ``configs/finetune/``, the task model is built
through the code path of ``encoder.source: official`` (``load_encoder`` -> ``build_task_model`` with the
config's ``mode``), with no forward pass. Checked per experiment:

* every loaded tensor is bit-identical to the file's, the encoder has exactly the projectors of the
  task's sensors, and the only projectors not loaded are those of sensors the release lacks (``hls``);
  the load is strict for everything else (a missing or unexpected non-projector key is an error);
* ``ft``: every parameter trains (the LTAE pad scalars excepted, as in pretraining);
* ``lp``: only the head trains;
* ``lpplus`` (official ``freeze_new``): exactly the new projectors and the head train, and there is at
  least one new projector.
"""

from __future__ import annotations

import json

import pytest
import torch

from anysat.sensors import OFFICIAL_SENSORS
from pipelines.datasets import get_dataset
from ray_jobs.config import load_config
from ray_jobs.finetune_config import FinetuneConfig, resolve_task
from ray_jobs.task import build_task_model, load_encoder
from ray_jobs_helpers import REPO

MANIFEST = REPO / "tests" / "data" / "anysat_base_state_dict.json"
CONFIGS = sorted((REPO / "configs" / "finetune").glob("*.yaml"))


@pytest.fixture(scope="module")
def released_like(tmp_path_factory):
    """``AnySat.pth`` with the released layout (``{"state_dict": ...}`` as the release ships it) and
    random values; returns (path, state dict)."""
    manifest = json.loads(MANIFEST.read_text())
    g = torch.Generator().manual_seed(0)
    sd = {e["key"]: torch.randn(e["shape"], generator=g) * 0.02 for e in manifest["state_dict"]}
    assert sum(v.numel() for v in sd.values()) == manifest["total_parameters"]
    path = tmp_path_factory.mktemp("official") / "AnySat.pth"
    torch.save({"state_dict": sd}, path)
    return path, sd


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_task_model_from_released_weights(config, released_like):
    path, released = released_like
    cfg = load_config(str(config), ["encoder.source=official", f"encoder.uri={path}"], cls=FinetuneConfig)
    task = resolve_task(cfg)
    entry = cfg.dataset
    sensors = list(entry.sensors or get_dataset(entry.name).model_sensors)

    encoder = load_encoder(cfg, sensors)
    model = build_task_model(encoder, task, cfg.mode != "ft", train_new=cfg.mode == "lpplus")

    # (a) the encoder is the released one, with the task's projectors; only unreleased sensors are new
    assert (encoder.embed_dim, encoder.depth, encoder.num_heads) == (768, 6, 12)
    assert encoder.sensors == sensors
    new = set(encoder.new_sensors)
    assert new == set(sensors) - set(OFFICIAL_SENSORS), (new, sensors)
    state = encoder.state_dict()
    loaded = [k for k in state if not any(k.startswith(f"projector_{s}.") for s in new)]
    assert set(loaded) == {k for k in released if not k.startswith("projector_")
                           or k.split(".")[0][len("projector_"):] in sensors}
    assert all(torch.equal(state[k], released[k]) for k in loaded)

    # (b, c) what trains
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    head = {k for k, _ in model.named_parameters() if k.startswith("net.head.")}
    assert head and head <= trainable
    new_proj = {k for k, p in model.named_parameters()
                if any(k.startswith(f"net.encoder.projector_{s}.") for s in new) and not k.endswith("pad_parameter")}
    if cfg.mode == "lp":
        assert trainable == head
    elif cfg.mode == "lpplus":
        assert new_proj, f"{config.name}: LP+ without a new projector trains the head only (use lp)"
        assert trainable == head | new_proj
        assert all(not m.training for n, m in model.net.encoder.named_modules()
                   if n and not any(n.startswith(f"projector_{s}") for s in new))
    else:
        assert trainable == {k for k, _ in model.named_parameters() if not k.endswith("pad_parameter")}


def test_the_catalogue_holds_the_papers_16_experiments():
    """The paper's downstream experiments our datasets cover: 16 configs besides the CPU demo ones (``-tiny``),
    each built above; LP+ exactly where the paper runs it (HLS Burn Scars)."""
    paper = [c for c in CONFIGS if not c.stem.endswith("-tiny")]
    assert len(paper) == 16, [c.stem for c in paper]
    assert [c.stem for c in paper if c.stem.endswith("-lpplus")] == ["hls-burn-scars-semseg-lpplus"]
