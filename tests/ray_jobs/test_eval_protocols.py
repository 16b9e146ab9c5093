"""Test-time windows of ``run_evaluation`` (``eval.test_crop``) on sample stores built with the real
pipeline: the official FLAIR five-window evaluation (``multi``) and the official TreeSatAI random test
window (``random``).

The models are small per-pixel networks, so the expected result is known exactly: a per-pixel model gives
every window the same logits at a pixel, so the assembled five-window canvas must equal the model applied
to the whole 512 × 512 image, and the metrics must be those of the whole label. A window placed at a wrong
offset, a missing division by the coverage or a label scored on the centre window would change them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anysat.losses import build_loss
from ray_jobs.config import load_config
from ray_jobs.data import collate
from ray_jobs.finetune_config import FinetuneConfig, resolve_task
from ray_jobs.plan import resolve_plans
from ray_jobs.task import FinetuneModel, eval_batches, run_evaluation, targets_from_batch
from ray_jobs_helpers import REPO

CPU = torch.device("cpu")


class PixelNet(torch.nn.Module):
    """Dense logits = a 1 x 1 convolution of one sensor's bands (translation-equivariant, per pixel)."""

    def __init__(self, key: str, bands: int, k: int):
        super().__init__()
        self.key = key
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(bands, k, 1)

    def forward(self, x, pad_mask=None):
        return self.conv(x[self.key])


class TileNet(PixelNet):
    """Tile logits = the window's mean of the per-pixel logits (depends on where the window is)."""

    def forward(self, x, pad_mask=None):
        return self.conv(x[self.key]).mean((-2, -1))


def _store(tmp_path_factory, dataset: str, tiles: int):
    from pipelines.ingest import run_ingest
    from pipelines.samplegen import get_generator

    raw, out = tmp_path_factory.mktemp(f"{dataset}-raw"), tmp_path_factory.mktemp(f"{dataset}-store")
    get_generator(dataset)(str(raw), tiles=tiles, seed=0)
    run_ingest(dataset, str(raw), str(out), executor="local", progress=False)
    return out


def _prepare(config: str, dataset: str, root) -> tuple:
    cfg = load_config(str(REPO / "configs/finetune" / config), [
        f"data.root={root}", "num_workers=1", "use_gpu=false", "model.size=tiny", "encoder.source=scratch",
        f"data.datasets.{dataset}.batch_size=2"], cls=FinetuneConfig)
    plan = resolve_plans(cfg)[cfg.dataset.name]
    return cfg, plan, resolve_task(cfg, plan)


def test_flair_five_windows_equal_the_whole_image_for_a_per_pixel_model(tmp_path_factory):
    cfg, plan, task = _prepare("flair-semseg-ft.yaml", "flair", _store(tmp_path_factory, "flair", 6))
    assert cfg.eval.test_crop == "multi" and plan.crop == {"aerial-flair": 500}
    assert [tuple(o) for o in cfg.eval.crop_offsets] == [(0, 0), (0, 12), (12, 0), (12, 12), (6, 6)]
    model = FinetuneModel(PixelNet("aerial-flair", 5, len(task.classes)), build_loss(task.loss, len(task.classes)))
    kw = dict(rank=0, world=1, device=CPU, seed=0, prefix="test")
    multi, m_multi, _ = run_evaluation(model, plan, task, "test", crop="multi", crop_offsets=cfg.eval.crop_offsets,
                                       **kw)
    whole, m_whole, _ = run_evaluation(model, plan.replace(crop={}), task, "test", **kw)
    centre, _, _ = run_evaluation(model, plan, task, "test", **kw)
    n = 2  # the sample's test domain holds two patches
    assert multi["test/n_samples"] == whole["test/n_samples"] == n
    # the whole 512 x 512 label is scored, not the centre window
    assert int(m_multi.statistics().sum()) == int(m_whole.statistics().sum()) == n * 512 * 512
    for k in whole:
        assert multi[k] == pytest.approx(whole[k], abs=1e-6), k
    assert centre["test/loss"] != pytest.approx(whole["test/loss"], abs=1e-6)

    # by hand: the five windows of every test patch, summed on the canvas and divided by the coverage
    full = plan.replace(crop={})
    raw = next(iter(eval_batches(full, "test", task.label, 0, 1, 0, 8)))
    x, _ = collate(raw, full)
    acc, cnt = torch.zeros(n, len(task.classes), 512, 512), torch.zeros(512, 512)
    for t, c in ((0, 0), (0, 12), (12, 0), (12, 12), (6, 6)):
        win = dict(x, **{"aerial-flair": x["aerial-flair"][..., t:t + 500, c:c + 500]})
        with torch.no_grad():
            acc[..., t:t + 500, c:c + 500] += model(win)
        cnt[t:t + 500, c:c + 500] += 1
    y = targets_from_batch(raw, task)
    assert float(model.criterion(acc / cnt, y)) == pytest.approx(multi["test/loss"], rel=1e-5)


def test_treesatai_random_test_window_is_seeded_per_tile(tmp_path_factory):
    cfg, plan, task = _prepare("treesatai-ts-cls-ft.yaml", "treesatai-ts", _store(tmp_path_factory, "treesatai-ts", 24))
    assert cfg.eval.test_crop == "random" and plan.crop == {"aerial": 300}
    model = FinetuneModel(TileNet("aerial", 4, len(task.classes)), build_loss(task.loss, len(task.classes)))
    kw = dict(rank=0, world=1, device=CPU, seed=cfg.seed, prefix="test")
    a, _, _ = run_evaluation(model, plan, task, "test", crop="random", **kw)
    b, _, _ = run_evaluation(model, plan, task, "test", crop="random", **kw)
    assert a == b  # reproducible
    centre, _, _ = run_evaluation(model, plan, task, "test", **kw)
    assert a["test/loss"] != pytest.approx(centre["test/loss"], abs=1e-7)

    # by hand: the 300 px window of tile i at offsets drawn from (seed, tile index), anywhere in 304 px
    full = plan.replace(crop={})
    loss, n, offsets = 0.0, 0, set()
    for raw in eval_batches(full, "test", task.label, 0, 1, 0, 4):
        x, _ = collate(raw, full)
        for i, tile in enumerate(raw["tile"]):
            t, c = np.random.default_rng([cfg.seed, int(tile)]).integers(0, [5, 5])
            offsets.add((int(t), int(c)))
            win = {"aerial": x["aerial"][i:i + 1, :, t:t + 300, c:c + 300]}
            with torch.no_grad():
                loss += float(model.criterion(model(win), targets_from_batch(raw, task)[i:i + 1]))
            n += 1
    assert len(offsets) > 1 and n == a["test/n_samples"]
    assert loss / n == pytest.approx(a["test/loss"], rel=1e-5)
