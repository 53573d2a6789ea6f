"""The LSE U-Net: encoder levels, decoder blocks, LSE pooling (METHOD.md, The proposed model)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from timm.layers import LayerNorm2d, SEModule
from torch import nn

from ichdemo.errors import ModelError
from ichdemo.models import create_model, lse_pool
from ichdemo.models.lse_unet import ConvBlock, UpBlock, select_levels

TINY = "lse_unet_mobilenetv3_small_050"
RDNET_CHANNELS = [256, 440, 744, 1040]


def _rdnet_shapes(size: int) -> tuple[list, list]:
    model = create_model("lse_unet_rdnet_tiny", pretrained=False).eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        feats = model.encoder(x)
        out = model(x)
    return [tuple(f.shape[1:]) for f in feats], [tuple(f.shape[1:]) for f in out.maps]


def test_rdnet_tiny_levels_at_256():
    feats, maps = _rdnet_shapes(256)
    assert feats == [(c, s, s) for c, s in zip(RDNET_CHANNELS, (64, 32, 16, 8))]
    assert maps == [(5, s, s) for s in (64, 32, 16, 8)]


def test_rdnet_tiny_levels_at_512_as_in_the_paper():
    feats, maps = _rdnet_shapes(512)
    assert feats == [(c, s, s) for c, s in zip(RDNET_CHANNELS, (128, 64, 32, 16))]
    assert maps[0] == (5, 128, 128)  # the heatmap f0 at input / 4


def test_decoder_follows_the_method():
    model = create_model("lse_unet_rdnet_tiny")
    widths = RDNET_CHANNELS
    assert model.ich_cfg["decoder_widths"] == widths
    for k, level in enumerate(model.levels):
        conv, norm, act, se = level.block
        assert isinstance(level.block, ConvBlock)
        assert conv.kernel_size == (1, 1) and conv.out_channels == widths[k]
        # skip + upsampled deeper features; the deepest level sees its skip only
        assert conv.in_channels == widths[k] + (widths[k] if k < 3 else 0)
        assert isinstance(norm, LayerNorm2d) and isinstance(act, nn.ReLU) and isinstance(se, SEModule)
        assert level.head.kernel_size == (1, 1) and level.head.out_channels == 5
        if k == 0:
            assert level.up is None
            continue
        assert isinstance(level.up, UpBlock)
        c1, c3, shuffle, ln = level.up
        assert c1.kernel_size == (1, 1) and c1.out_channels == widths[k - 1]
        assert c3.kernel_size == (3, 3) and c3.out_channels == 4 * widths[k - 1]
        assert isinstance(shuffle, nn.PixelShuffle) and shuffle.upscale_factor == 2
        assert isinstance(ln, LayerNorm2d) and ln.normalized_shape == (widths[k - 1],)


def test_select_levels_skips_stride_two_and_takes_the_deepest_of_a_stride():
    assert select_levels([2, 4, 8, 16, 32]) == [1, 2, 3, 4]
    assert select_levels([4, 8, 16, 32]) == [0, 1, 2, 3]
    assert select_levels([2, 4, 4, 8, 16, 16, 32]) == [2, 3, 5, 6]
    with pytest.raises(ModelError, match="stride 32"):
        select_levels([2, 4, 8, 16])


def test_lse_pool_by_hand():
    r = 3.0
    x = torch.tensor([0.0, 0.0, 0.0, math.log(2.0) / r]).view(1, 1, 2, 2)
    # sum exp(r x) = 1 + 1 + 1 + 2 = 5
    assert torch.allclose(lse_pool(x, r, mean=False), torch.tensor([[math.log(5.0)]]))
    assert torch.allclose(lse_pool(x, r, mean=True), torch.tensor([[math.log(5.0 / 4.0)]]))
    const = torch.full((2, 5, 8, 8), 0.7)
    assert torch.allclose(lse_pool(const, r, mean=True), torch.full((2, 5), r * 0.7), atol=1e-6)
    big = torch.tensor([10.0, -10.0, -10.0, -10.0]).view(1, 1, 2, 2)
    assert torch.allclose(lse_pool(big, r, mean=False), torch.tensor([[30.0]]), atol=1e-5)  # ~ r * max


def test_lse_pool_gradient_is_r_softmax():
    x = torch.randn(1, 1, 3, 3, requires_grad=True)
    lse_pool(x, 3.0).sum().backward()
    expected = 3.0 * torch.softmax(3.0 * x.detach().flatten(), 0).view_as(x)
    assert torch.allclose(x.grad, expected, atol=1e-6)


def test_lse_mean_option_shifts_each_level_by_log_n():
    torch.manual_seed(0)
    a = create_model(TINY, lse_mean=True).eval()
    b = create_model(TINY, lse_mean=False).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        la, lb = a(x).level_logits, b(x).level_logits
    for k, n in enumerate((16 * 16, 8 * 8, 4 * 4, 2 * 2)):
        assert torch.allclose(lb[k] - la[k], torch.full_like(la[k], math.log(n)), atol=1e-5)


def test_lse_r_option():
    torch.manual_seed(0)
    model = create_model(TINY, lse_r=5.0).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert torch.allclose(out.logits, lse_pool(out.maps[0], 5.0, True), atol=1e-6)
    assert model.ich_cfg["model_args"]["lse_r"] == 5.0


def test_input_size_not_multiple_of_32():
    model = create_model(TINY).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 72, 88))
    assert out.maps[0].shape == (1, 5, 18, 22)
    assert out.logits.shape == (1, 5)


def test_decoder_channels_option():
    model = create_model(TINY, decoder_channels=[8, 16, 24, 32])
    assert [lvl.block[0].out_channels for lvl in model.levels] == [8, 16, 24, 32]
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, 64, 64))
    assert out.maps[0].shape == (1, 5, 16, 16)
    with pytest.raises(ModelError, match="4 widths"):
        create_model(TINY, decoder_channels=[8, 16])


def test_encoder_without_stride_32_is_refused():
    with pytest.raises(ModelError, match="need 4, 8, 16, 32"):
        create_model("lse_unet", encoder="vit_tiny_patch16_224")


def test_lse_pool_region_sums_inside_only():
    r = 3.0
    x = torch.tensor([0.0, 0.0, 5.0, math.log(2.0) / r]).view(1, 1, 2, 2)
    region = torch.tensor([True, True, False, True]).view(1, 1, 2, 2)
    # the 5.0 outside is ignored: sum exp(r x) over the region = 1 + 1 + 2
    assert torch.allclose(lse_pool(x, r, mean=False, region=region), torch.tensor([[math.log(4.0)]]))
    assert torch.allclose(lse_pool(x, r, mean=True, region=region), torch.tensor([[math.log(4.0 / 3.0)]]))
    empty = torch.zeros_like(region)  # nothing inside: the whole map, never -inf
    assert torch.allclose(lse_pool(x, r, mean=False, region=empty), lse_pool(x, r, mean=False))


def test_foreground_pooling_ignores_the_air_around_the_head():
    """pool_region="foreground": logits and heatmaps come from cells that hold some head; what the decoder writes
    into the air cannot raise a logit."""
    from ichdemo.cam import lse_heatmaps
    from ichdemo.models.registry import normalize_input

    torch.manual_seed(0)
    model = create_model(TINY, pool_region="foreground", lse_mean=False).eval()
    assert model.ich_cfg["model_args"]["pool_region"] == "foreground"
    unit = torch.zeros(1, 3, 128, 128)
    unit[:, :, 40:90, 30:100] = 0.5  # the "head"; air elsewhere
    x = normalize_input(unit, model.ich_cfg)
    with torch.no_grad():
        out = model(x)
        head = out.regions[0][0, 0]
        assert head.shape == (32, 32) and head[10:22, 8:25].all() and not head[:8].any()
        model.levels[0].head.bias.fill_(-5.0)
        before = model(x).logits
        f0_hook = model.levels[0].head.register_forward_hook(
            lambda m, i, o: o.masked_fill(~head, 50.0))  # huge evidence in the air only
        after = model(x).logits
        f0_hook.remove()
    assert torch.allclose(before, after, atol=1e-5)
    res = lse_heatmaps(model, x)
    assert (res.raw[0][:, ~head] == 0).all()
    # no head at all (an empty slice): pooled whole, and the map is the whole-image model's, so it agrees with
    # the logit instead of being blank beside a positive call
    with torch.no_grad():
        model.levels[0].head.bias.fill_(1.0)  # evidence everywhere, so the maps are not blank
    whole = create_model(TINY, lse_mean=False).eval()
    whole.load_state_dict(model.state_dict())
    air = normalize_input(torch.zeros(1, 3, 128, 128), model.ich_cfg)
    with torch.no_grad():
        assert model(air).regions[0].all()
    got, ref = lse_heatmaps(model, air), lse_heatmaps(whole, air)
    assert ref.raw.max() > 0
    assert torch.allclose(got.logits, ref.logits, atol=1e-5) and torch.allclose(got.raw, ref.raw, atol=1e-4)
    with pytest.raises(ModelError, match="pool_region"):
        create_model(TINY, pool_region="brain")


def _phantom_unit(size: int = 128, subtypes: tuple[str, ...] = ("SDH",)):
    """A phantom's middle slices in CT-ICH's 40/120 window, resized to ``size``: (stack (1, 3, s, s), masks)."""
    import torch.nn.functional as F

    from ichdemo.phantom import generate_phantom

    p = generate_phantom(seed=1, subtypes=subtypes, shape=(16, 256, 256))
    s = int(np.argmax(p.slice_labels.any(axis=1) * (p.masks["brain"].sum(axis=(1, 2)))))  # a lesion slice
    unit = torch.from_numpy(np.clip((p.hu[s - 1 : s + 2] + 20.0) / 120.0, 0, 1)).float()[None]
    unit = F.interpolate(unit, size=(size, size), mode="area")

    def down(mask: np.ndarray) -> np.ndarray:  # a pixel of the size grid holds some of the mask
        t = torch.from_numpy(mask.astype(np.float32))[None, None]
        return F.adaptive_max_pool2d(t, (size, size))[0, 0].numpy() > 0

    def core(mask: np.ndarray) -> np.ndarray:  # the pixels of the size grid wholly inside the mask
        t = torch.from_numpy(mask.astype(np.float32))[None, None]
        return -F.adaptive_max_pool2d(-t, (size, size))[0, 0].numpy() > 0

    inner = p.masks["brain"][s] | (p.labels[s] > 0)  # the brain mask leaves out the collections it gives way to
    masks = {"brain": core(inner), "brain_any": down(inner),
             "head": down(p.masks["head"][s]), "skull_core": core(p.masks["skull"][s]),
             "lesion": core(p.labels[s] > 0)}
    return unit, masks


def test_intracranial_mask_is_the_inside_of_the_phantom_skull():
    from ichdemo.models.lse_unet import intracranial_mask

    unit, m = _phantom_unit()
    inside = intracranial_mask(unit[:, 1:2])[0, 0].numpy()
    assert not (inside & ~m["brain_any"]).any()  # never scalp, air or the skull's outside
    assert not (inside & m["skull_core"]).any()  # never bone
    assert inside[m["brain"]].mean() > 0.95  # nearly all of the brain
    assert m["lesion"].any() and inside[m["lesion"]].all()  # the SDH along the inner table included
    assert inside.sum() < 0.9 * m["head"].sum()  # a real narrowing of "foreground"


def test_intracranial_pooling_ignores_scalp_skull_and_air():
    """pool_region="intracranial": nothing the decoder writes outside the skull can raise a logit, while the same
    evidence inside does (so the check can fail)."""
    from ichdemo.models.registry import normalize_input

    torch.manual_seed(0)
    model = create_model(TINY, pool_region="intracranial", lse_mean=False).eval()
    assert model.ich_cfg["model_args"]["pool_region"] == "intracranial"
    unit, m = _phantom_unit()
    x = normalize_input(unit, model.ich_cfg)
    with torch.no_grad():
        out = model(x)
        fg = create_model(TINY, pool_region="foreground", lse_mean=False).eval()
        fg.load_state_dict(model.state_dict())
        head = fg(x).regions
        for k, (inner, outer) in enumerate(zip(out.regions, head)):
            assert inner.shape == out.maps[k].shape[:1] + (1,) + out.maps[k].shape[2:]
            assert not (inner & ~outer).any() and inner.sum() < outer.sum()  # inside the head, smaller
        region = out.regions[0][0, 0]
        assert region.any() and not region[0].any() and not region[:, 0].any()  # the image border is air
        for level in model.levels:
            level.head.bias.fill_(-5.0)
        before = model(x).level_logits
        hooks = [lv.head.register_forward_hook(lambda mod, i, o, r=r: o.masked_fill(~r, 50.0))
                 for lv, r in zip(model.levels, out.regions)]
        after = model(x).level_logits
        for h in hooks:
            h.remove()
        hook = model.levels[0].head.register_forward_hook(lambda mod, i, o: o.masked_fill(region, 50.0))
        raised = model(x).logits
        hook.remove()
    for b, a in zip(before, after):
        assert torch.allclose(b, a, atol=1e-5)
    assert (raised > before[0] + 10).all()


@pytest.mark.parametrize("subtypes", [("IPH",), ("SDH",)])
def test_blood_mask_is_the_phantom_lesion_not_the_brain(subtypes):
    """pool_region="blood" pools where the CT could hold acute blood: the phantom's lesion (an IPH deep in the brain,
    an SDH along the inner table) and almost none of the brain around it; never outside the skull."""
    from ichdemo.models.lse_unet import blood_mask, intracranial_mask

    unit, m = _phantom_unit(256, subtypes)
    mid = unit[:, 1:2]
    inside = intracranial_mask(mid)
    blood = blood_mask(mid, inside)[0, 0].numpy()
    assert not (blood & ~inside[0, 0].numpy()).any()
    lesion = m["lesion"]
    assert lesion.sum() > 50 and blood[lesion].mean() > 0.6  # a two-pixel rim at the inner table is left out
    brain = m["brain"] & ~lesion
    assert (blood & brain).sum() < 0.05 * brain.sum()  # 20-45 HU brain lies below the band
    assert (blood & lesion).sum() > 0.5 * blood.sum()  # most of what is pooled is the lesion


def test_blood_pooling_lies_within_the_skull_interior():
    from ichdemo.models.registry import normalize_input

    torch.manual_seed(0)
    model = create_model(TINY, pool_region="blood", lse_mean=False).eval()
    inner = create_model(TINY, pool_region="intracranial", lse_mean=False).eval()
    inner.load_state_dict(model.state_dict())
    unit, m = _phantom_unit()
    x = normalize_input(unit, model.ich_cfg)
    with torch.no_grad():
        for b, i in zip(model(x).regions, inner(x).regions):
            assert b.any() and not (b & ~i).any() and b.sum() < 0.5 * i.sum()


@pytest.mark.parametrize("region", ["intracranial", "blood"])
def test_skull_regions_fall_back_to_the_head_without_a_skull(region):
    from ichdemo.models.registry import normalize_input

    model = create_model(TINY, pool_region=region).eval()
    fg = create_model(TINY, pool_region="foreground").eval()
    fg.load_state_dict(model.state_dict())
    unit = torch.zeros(2, 3, 128, 128)
    unit[0, :, 40:90, 30:100] = 0.5  # soft tissue, no bone: the head as "foreground" has it
    unit[1, :, 20:108, 20:108] = 1.0  # a skull ring around brain, no blood density in it: the whole interior
    unit[1, :, 26:102, 26:102] = 0.5
    x = normalize_input(unit, model.ich_cfg)
    with torch.no_grad():
        got, ref = model(x).regions, fg(x).regions
    assert torch.equal(got[0][0], ref[0][0])
    ring = got[0][1, 0]
    assert ring[7:25, 7:25].all() and not ring[:5].any() and ring.sum() < ref[0][1, 0].sum()


@pytest.mark.parametrize("region", ["intracranial", "blood"])
def test_skull_region_models_export_to_onnx(tmp_path, region):
    pytest.importorskip("onnxruntime")
    from ichdemo.models.registry import normalize_input
    from ichdemo.onnx_model import OnnxModel, export_onnx

    torch.manual_seed(0)
    model = create_model(TINY, pool_region=region).eval()
    path = export_onnx(model, tmp_path / "m.onnx", 128)
    unit, _ = _phantom_unit()
    plain = torch.zeros(1, 3, 128, 128)
    plain[:, :, 40:90, 30:100] = 0.5  # no skull: the fallback branch
    x = normalize_input(torch.cat([unit, plain]), model.ich_cfg)
    got = OnnxModel(path).run(x.numpy())
    with torch.no_grad():
        ref = model(x).logits.numpy()
    assert np.abs(got["logits"] - ref).max() < 1e-3
