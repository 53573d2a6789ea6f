"""The LSE U-Net: encoder levels, decoder blocks, LSE pooling (METHOD.md, The proposed model)."""

from __future__ import annotations

import math

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
