"""Public API of the AnySat encoder: sizes, state-dict layout, loading, padding masks, input checks,
registry-driven projectors and the pretraining entry points (project / patch_pe / combine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from anysat import AnySat
from anysat.model import Projected
from anysat.sensors import OFFICIAL_SENSORS, SENSORS, Sensor, register_sensor

REPO = Path(__file__).resolve().parents[2]
# Key names and shapes of the released base encoder's state dict (tests/data/README.md).
MANIFEST = REPO / "tests" / "data" / "anysat_base_state_dict.json"


def _manifest():
    return json.loads(MANIFEST.read_text())


def _count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return AnySat.from_size("tiny").eval()


def treesat(B=2, T2=5, T1=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "aerial": torch.randn(B, 4, 300, 300, generator=g),
        "s2": torch.randn(B, T2, 10, 6, 6, generator=g),
        "s2_dates": torch.randint(1, 366, (B, T2), generator=g),
        "s1-asc": torch.randn(B, T1, 2, 6, 6, generator=g),
        "s1-asc_dates": torch.randint(1, 366, (B, T1), generator=g),
    }


def planted(B=2, modis=True, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = {
        "s2": torch.randn(B, 6, 10, 12, 12, generator=g), "s2_dates": torch.randint(1, 366, (B, 6), generator=g),
        "s1": torch.randn(B, 5, 3, 12, 12, generator=g), "s1_dates": torch.randint(1, 366, (B, 5), generator=g),
        "l7": torch.randn(B, 4, 6, 4, 4, generator=g), "l7_dates": torch.randint(1, 366, (B, 4), generator=g),
        "alos": torch.randn(B, 3, 3, 4, 4, generator=g), "alos_dates": torch.randint(1, 366, (B, 3), generator=g),
    }
    if modis:
        x |= {"modis": torch.randn(B, 7, 7, 1, 1, generator=g), "modis_dates": torch.randint(1, 366, (B, 7), generator=g)}
    return x


# ---------------------------------------------------------------- sizes and state dict
@pytest.mark.parametrize("size,params", [("tiny", 8_135_015), ("small", 43_811_271), ("base", 125_905_447)])
def test_parameter_counts(size, params):
    with torch.device("meta"):
        model = AnySat.from_size(size)
    assert _count(model) == params
    assert sorted(model.sensors) == sorted(OFFICIAL_SENSORS)
    # the 11 LTAE/VHR pad scalars are the only frozen parameters (7 LTAE projectors)
    assert params - sum(p.numel() for p in model.parameters() if p.requires_grad) == 7


def test_base_state_dict_matches_manifest():
    manifest = _manifest()
    with torch.device("meta"):
        model = AnySat.from_size("base")
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert ours == [(e["key"], e["shape"]) for e in manifest["state_dict"]]
    assert (model.embed_dim, model.depth, model.num_heads) == (manifest["embed_dim"], manifest["depth"], manifest["num_heads"])


def test_from_official_on_manifest_shaped_state_dict():
    manifest = _manifest()
    g = torch.Generator().manual_seed(0)
    sd = {e["key"]: torch.randn(e["shape"], generator=g) for e in manifest["state_dict"]}
    model = AnySat.from_official(sd)
    assert (model.embed_dim, model.depth, model.num_heads) == (768, 6, 12)
    assert not model.training
    out = model.state_dict()
    assert list(out) == list(sd)
    assert all(torch.equal(out[k], v) for k, v in sd.items())


def test_from_official_subset_of_sensors_and_prefix(tmp_path):
    torch.manual_seed(0)
    src = AnySat.from_size("tiny", sensors=["s2", "aerial"]).eval()
    sd = src.state_dict()
    # bare state dict -> same sizes and projectors
    m = AnySat.from_official(sd)
    assert sorted(m.sensors) == ["aerial", "s2"] and (m.embed_dim, m.depth, m.num_heads) == (256, 2, 4)
    # file with {"state_dict": ...}, Lightning-style prefixes (student + teacher): needs prefix=
    ckpt = {"state_dict": {**{f"model.encoder.{k}": v for k, v in sd.items()},
                           **{f"target_encoder.{k}": v + 1 for k, v in sd.items()},
                           "model.predictor.cls_token": torch.zeros(1, 1, 256)}}
    path = tmp_path / "ckpt.pt"
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match="prefix"):
        AnySat.from_official(path)
    teacher = AnySat.from_official(path, prefix="target_encoder.")
    assert torch.equal(teacher.cls_token, sd["cls_token"] + 1)
    student = AnySat.from_official(str(path), prefix="model.encoder.")
    x = treesat(B=1)
    del x["s1-asc"], x["s1-asc_dates"]
    with torch.inference_mode():
        assert torch.equal(student(x, patch_size=20, output="all"), src(x, patch_size=20, output="all"))
    # a single prefixed encoder is found without prefix=
    torch.save({f"target_encoder.{k}": v for k, v in sd.items()}, path)
    assert torch.equal(AnySat.from_official(path).cls_token, sd["cls_token"])


def test_state_dict_round_trip(tiny):
    clone = AnySat.from_official(tiny.state_dict())
    for (k1, v1), (k2, v2) in zip(tiny.state_dict().items(), clone.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    x = treesat(B=1)
    with torch.inference_mode():
        assert torch.equal(tiny(x, patch_size=10, output="all"), clone(x, patch_size=10, output="all"))


def test_init_follows_official_recipe():
    torch.manual_seed(0)
    m = AnySat.from_size("tiny")
    se = m.spatial_encoder
    assert torch.count_nonzero(se.cls_token) == 0 and torch.count_nonzero(m.blocks[-1].attn.q_learned) == 0
    assert torch.count_nonzero(se.predictor_blocks[0].attn.qkv.bias) == 0
    std0 = se.predictor_blocks[0].mlp.fc2.weight.std().item()
    std1 = se.predictor_blocks[1].mlp.fc2.weight.std().item()
    assert abs(std0 - 0.02 / 2**0.5) < 2e-3 and abs(std1 - 0.02 / 2) < 2e-3  # divided by sqrt(2 l)
    assert abs(m.cls_token.std().item() - 0.02) < 5e-3
    assert abs(m.projector("s2").patch_embed.attention_heads.Q.std().item() - 0.5) < 0.15
    assert all(float(getattr(m, f"projector_{k}").pad_parameter) == 0 for k in ("s2", "modis", "alos"))


# ---------------------------------------------------------------- outputs
def test_output_shapes(tiny):
    x = treesat(B=1)
    with torch.inference_mode():
        assert tiny(x, patch_size=10, output="tile").shape == (1, 256)
        assert tiny(x, patch_size=10, output="patch").shape == (1, 6, 6, 256)
        assert tiny(x, patch_size=20, output="all").shape == (1, 10, 256)
        assert tiny(x, patch_size=20, output="dense").shape == (1, 30, 30, 512)  # default: first sensor
        assert tiny(x, patch_size=20, output="dense", output_modality="s2").shape == (1, 6, 6, 512)
        assert tiny(x, patch_size=30, output="patch").shape == (1, 2, 2, 256)
        assert tiny(x, patch_size=60, output="all").shape == (1, 2, 256)


def test_modis_and_30m_sensors(tiny):
    x = planted()
    with torch.inference_mode():
        y = tiny(x, patch_size=30, output="all")
        assert y.shape == (2, 17, 256)
        assert tiny(x, patch_size=60, output="patch").shape == (2, 2, 2, 256)
        assert tiny(x, patch_size=120, output="tile").shape == (2, 256)
        # the context token matters
        x2 = dict(x, modis=x["modis"] + 1)
        assert (tiny(x2, patch_size=30, output="all") - y).abs().max() > 1e-4


def test_modality_masks_use_pad_parameter(tiny):
    x = planted(modis=False)
    m = torch.ones(2, 6, 1, 12, 12)
    m[:, 2] = 0
    with torch.inference_mode():
        a = tiny(dict(x, s2_mask=m), patch_size=30, output="all")
        s2 = x["s2"].clone()
        s2[:, 2] = 0.0  # pad_parameter is 0 after init
        b = tiny(dict(x, s2=s2), patch_size=30, output="all")
    assert torch.allclose(a, b, atol=1e-6)


def test_padding_mask_invariance(tiny):
    """A batch padded with extra dates + pad_mask gives per sample what the unpadded sample gives."""
    x0 = treesat(B=1, T2=5, T1=3, seed=3)
    x1 = treesat(B=1, T2=7, T1=4, seed=4)
    with torch.inference_mode():
        ref = [tiny(x, patch_size=20, output="all") for x in (x0, x1)]
        batch, pad = {"aerial": torch.cat([x0["aerial"], x1["aerial"]])}, {}
        for key, T in (("s2", 7), ("s1-asc", 4)):
            xs, ds, ms = [], [], []
            for x in (x0, x1):
                t = x[key].shape[1]
                junk = torch.randn(1, T - t, *x[key].shape[2:])  # padded content must not matter
                xs.append(torch.cat([x[key], junk], 1))
                ds.append(torch.cat([x[f"{key}_dates"], torch.zeros(1, T - t, dtype=torch.long)], 1))
                ms.append(torch.arange(T)[None] >= t)
            batch[key], batch[f"{key}_dates"], pad[key] = torch.cat(xs), torch.cat(ds), torch.cat(ms)
        y = tiny(batch, patch_size=20, output="all", pad_mask=pad)
        assert torch.allclose(y[0:1], ref[0], atol=2e-5) and torch.allclose(y[1:2], ref[1], atol=2e-5)
        # without the mask the padded dates take part (official behaviour)
        y_official = tiny(batch, patch_size=20, output="all")
        assert (y_official[0:1] - ref[0]).abs().max() > 1e-3


# ---------------------------------------------------------------- errors
def _err(model, x, match, **kw):
    kw.setdefault("patch_size", 20)
    with pytest.raises(ValueError, match=match):
        model(x, **kw)


def test_input_errors(tiny):
    x = treesat(B=1)
    _err(tiny, dict(x, foo=torch.zeros(1, 3, 6, 6)), "unknown sensor 'foo'")
    _err(tiny, {k: v for k, v in x.items() if k != "s2_dates"}, "s2_dates")
    _err(tiny, dict(x, s2=x["s2"][:, 0]), "sensor 's2': expected a 5-D")
    _err(tiny, dict(x, aerial=x["aerial"][None]), "sensor 'aerial': expected a 4-D")
    _err(tiny, dict(x, aerial=x["aerial"][..., :250, :250]), "footprints differ")
    _err(tiny, dict(x, aerial=x["aerial"][..., :250]), "square")
    _err(tiny, x, "does not divide", patch_size=40)
    _err(tiny, x, "multiple of 10", patch_size=15)
    _err(tiny, dict(x, s2=x["s2"][:, :, :3]), "channels")
    _err(tiny, dict(x, s2_dates=x["s2_dates"][:, :2]), "s2_dates")
    _err(tiny, dict(x, l8_dates=x["s2_dates"]), "no matching sensor")
    _err(tiny, x, "output must be", output="pixels")
    _err(tiny, x, "output_modality", output="dense", output_modality="s1")
    _err(tiny, x, "pad_mask", pad_mask={"aerial": torch.zeros(1, 1, dtype=torch.bool)})
    _err(tiny, x, "pad_mask", pad_mask={"s2": torch.zeros(1, 2, dtype=torch.bool)})


def test_30m_and_context_errors(tiny):
    x = planted(B=1)
    _err(tiny, x, r"not a multiple of the 30 m sub-patch of sensor '(l7|alos)'", patch_size=20)
    _err(tiny, dict(x, modis=torch.randn(1, 7, 7, 2, 2)), "modis.*1 x 1")
    _err(tiny, x, "context sensor", patch_size=30, output="dense", output_modality="modis")
    only_ctx = {k: v for k, v in x.items() if k.startswith("modis")}
    _err(tiny, only_ctx, "non-context", patch_size=30)


def test_missing_projector():
    torch.manual_seed(0)
    model = AnySat.from_size("tiny", sensors=["s2"]).eval()
    _err(model, treesat(B=1), "no projector for sensor 'aerial'")


# ---------------------------------------------------------------- registry-driven projectors
def test_new_sensor_from_registry():
    hls = Sensor("hls", 30, ("B02", "B03", "B04", "B8A", "B11", "B12"), True, "ltae", subpatch_m=30,
                 reduce_scale=3, t0=366)
    previous = SENSORS.pop("hls", None)  # pipelines.datasets may have registered the real one
    register_sensor(hls)
    try:
        torch.manual_seed(0)
        model = AnySat.from_size("tiny", sensors=["s2", "hls"]).eval()
        assert "projector_hls.patch_embed.inconv.0.weight" in model.state_dict()
        x = {"s2": torch.randn(2, 4, 10, 12, 12), "s2_dates": torch.randint(1, 366, (2, 4)),
             "hls": torch.randn(2, 3, 6, 4, 4), "hls_dates": torch.randint(1, 366, (2, 3))}
        with torch.inference_mode():
            assert model(x, patch_size=30, output="patch").shape == (2, 4, 4, 256)
            assert model(x, patch_size=60, output="dense", output_modality="hls").shape == (2, 4, 4, 512)
        _err(model, x, "sub-patch of sensor 'hls'", patch_size=20)
        assert sorted(AnySat.from_official(model.state_dict()).sensors) == ["hls", "s2"]
    finally:
        SENSORS.pop("hls", None)
        if previous is not None:
            SENSORS["hls"] = previous


# ---------------------------------------------------------------- pretraining entry points
def test_project_patch_pe_combine(tiny):
    x = planted()
    with torch.inference_mode():
        proj = tiny.project(x, 30, keep_subpatch="s2")
        assert isinstance(proj, Projected)
        assert list(proj.tokens) == ["s2", "s1", "l7", "alos"] and proj.context.shape == (2, 1, 256)
        assert proj.n == 4 and proj.scale == 3 and proj.subpatch["s2"].shape == (2, 16, 9, 256)
        assert tiny.patch_pe(4, 3, None, torch.float32).shape == (16, 256)
        seq = tiny.assemble(proj)
        full = tiny.combine(seq, proj.n, proj.scale, 4, True)
        assert torch.allclose(full, tiny(x, patch_size=30, output="all"), atol=1e-5)
        # query_idx = every patch in raster order == no query_idx
        idx = torch.arange(16).expand(2, -1)
        assert torch.allclose(tiny.combine(seq, 4, 3, 4, True, query_idx=idx), full, atol=1e-5)
        # a subset of patches: gather each modality's tokens at idx (with their PE)
        idx = torch.tensor([[0, 5, 6], [3, 9, 15]])
        pe = tiny.patch_pe(4, 3, None, torch.float32)
        parts = [proj.context] + [torch.gather(t, 1, idx[..., None].expand(-1, -1, 256)) + pe[idx]
                                  for t in proj.tokens.values()]
        sub = tiny.combine(torch.cat(parts, 1), 4, 3, 4, True, query_idx=idx)
        assert sub.shape == (2, 4, 256)


def test_combine_key_mask_equals_dropping_tokens(tiny):
    x = treesat()
    with torch.inference_mode():
        proj = tiny.project(x, 20)
        pe = tiny.patch_pe(proj.n, proj.scale)
        a, b, c = (t + pe for t in proj.tokens.values())
        mask = torch.ones(2, 27, dtype=torch.bool)
        mask[:, 9:] = False  # hide s2 and s1-asc
        masked = tiny.combine(torch.cat([a, b, c], 1), 3, 2, 3, False, attn_mask=mask)
        alone = tiny.combine(a, 3, 2, 1, False)
    assert torch.allclose(masked, alone, atol=1e-5)


def test_attention_switch(tiny):
    x = treesat(B=1)
    with torch.inference_mode():
        a = tiny(x, patch_size=20, output="all")
        b = tiny.set_attention("flash-heads")(x, patch_size=20, output="all")
        tiny.set_attention("tokens")
        assert torch.equal(tiny(x, patch_size=20, output="all"), a)
    assert (a - b).abs().max() > 1e-4


def test_import_is_cheap():
    code = "import sys, anysat; assert 'torch' not in sys.modules; from anysat import AnySat; assert 'torch' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
