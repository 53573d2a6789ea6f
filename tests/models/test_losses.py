"""CLoss, HLoss and the family losses on tiny tensors computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from ichdemo.errors import ConfigError
from ichdemo.models import Output, build_loss, create_model
from ichdemo.models.losses import CLoss, GapLoss, HLoss, LseUnetLoss


def _bce(x: float, y: float, pos_weight: float = 1.0) -> float:
    """-[w y log s(x) + (1 - y) log(1 - s(x))] by hand."""
    s = 1.0 / (1.0 + math.exp(-x))
    return -(pos_weight * y * math.log(s) + (1 - y) * math.log(1 - s))


def _maps(values: tuple[float, float, float, float]) -> list[torch.Tensor]:
    """Constant maps f0 8x8, f1 4x4, f2 2x2, f3 1x1 with the given values (1 sample, 1 class)."""
    return [torch.full((1, 1, s, s), v) for v, s in zip(values, (8, 4, 2, 1))]


def test_closs_weights_levels_2_half_quarter_eighth():
    y = torch.tensor([[1.0, 0.0]])
    logits = [
        torch.tensor([[2.0, -1.0]]),
        torch.tensor([[0.0, 0.0]]),
        torch.tensor([[-1.0, 1.0]]),
        torch.tensor([[3.0, 3.0]]),
    ]
    per_level = [
        (_bce(2.0, 1) + _bce(-1.0, 0)) / 2,
        (_bce(0.0, 1) + _bce(0.0, 0)) / 2,
        (_bce(-1.0, 1) + _bce(1.0, 0)) / 2,
        (_bce(3.0, 1) + _bce(3.0, 0)) / 2,
    ]
    expected = 2 * per_level[0] + 0.5 * per_level[1] + 0.25 * per_level[2] + 0.125 * per_level[3]
    assert CLoss()(logits, y).item() == pytest.approx(expected, rel=1e-6)


def test_closs_all_zero_logits_is_2_875_log_2():
    logits = [torch.zeros(3, 5)] * 4
    assert CLoss()(logits, torch.randint(0, 2, (3, 5))).item() == pytest.approx(2.875 * math.log(2), rel=1e-6)


def test_closs_pos_weight_and_custom_alphas():
    y = torch.tensor([[1.0, 0.0]])
    logits = [torch.tensor([[0.5, 0.5]])] * 4
    loss = CLoss(alphas=(1, 0, 0, 0), pos_weight=torch.tensor([3.0, 3.0]))(logits, y)
    assert loss.item() == pytest.approx((_bce(0.5, 1, 3.0) + _bce(0.5, 0, 3.0)) / 2, rel=1e-6)


def test_hloss_average_pool_by_hand():
    # Pool(f0) = 2 vs f1 = 1 -> 1; Pool(f1) = 1 vs f2 = 3 -> 4; Pool(f2) = 3 vs f3 = 3 -> 0
    assert HLoss()(_maps((2.0, 1.0, 3.0, 3.0))).item() == pytest.approx(0.5 * 1 + 0.25 * 4 + 0.125 * 0)


def test_hloss_pool_averages_2x2_blocks_not_the_whole_map():
    f0 = torch.tensor([[1.0, 3.0, 0.0, 0.0], [5.0, 7.0, 0.0, 4.0], [0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0]])
    f1 = torch.tensor([[4.0, 1.0], [0.0, 2.0]])  # exactly the 2x2 means of f0
    maps = [f0.view(1, 1, 4, 4), f1.view(1, 1, 2, 2), torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1)]
    terms = HLoss().terms(maps)
    assert terms[0].item() == 0.0
    assert terms[1].item() == pytest.approx(((4 + 1 + 0 + 2) / 4) ** 2)


def test_hloss_sum_pool_variant_and_betas():
    # sum pool: 4 * 2 = 8 vs 1 -> 49; 4 * 1 = 4 vs 3 -> 1; 12 vs 3 -> 81
    loss = HLoss(betas=(1.0, 2.0, 3.0), pool="sum")(_maps((2.0, 1.0, 3.0, 3.0)))
    assert loss.item() == pytest.approx(49 + 2 * 1 + 3 * 81)
    with pytest.raises(ConfigError, match="pool"):
        HLoss(pool="max")


def test_hloss_adapts_to_odd_sizes():
    maps = [torch.ones(1, 1, 5, 5), torch.ones(1, 1, 3, 3), torch.ones(1, 1, 2, 2), torch.ones(1, 1, 1, 1)]
    assert HLoss()(maps).item() == pytest.approx(0.0)


def test_lse_unet_loss_is_closs_plus_weighted_hloss():
    maps = _maps((2.0, 1.0, 3.0, 3.0))
    level_logits = [torch.tensor([[float(k)]]) for k in range(4)]
    out = Output(logits=level_logits[0], maps=maps, level_logits=level_logits)
    y = torch.tensor([[1.0]])
    closs = CLoss()(level_logits, y).item()
    hloss = 0.5 * 1 + 0.25 * 4
    assert LseUnetLoss()(out, y).item() == pytest.approx(closs + hloss, rel=1e-6)
    assert LseUnetLoss(hloss_weight=0.5)(out, y).item() == pytest.approx(closs + 0.5 * hloss, rel=1e-6)
    terms = LseUnetLoss(hloss_weight=0.0).terms(out, y)  # the "without HLoss" ablation
    assert terms["loss"].item() == pytest.approx(closs, rel=1e-6) and terms["hloss"].item() == 0.0
    assert set(terms) == {"bce_l0", "bce_l1", "bce_l2", "bce_l3", "closs", "hloss", "loss"}
    with pytest.raises(ConfigError):
        LseUnetLoss(hloss_weight=-1)


def test_any_weight_adds_bce_of_the_soft_maximum_of_subtype_logits():
    """any_weight: BCE(logsumexp_k l_0k, any hemorrhage), by hand: slice 1 labelled with one subtype, slice 2 none."""
    maps = [torch.zeros(2, 2, 8 // 2**k, 8 // 2**k) for k in range(4)]
    l0 = torch.tensor([[1.0, -2.0], [-1.0, -3.0]])
    out = Output(logits=l0, maps=maps, level_logits=[l0] * 4)
    y = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    base = LseUnetLoss()(out, y).item()
    z = torch.log(torch.exp(l0).sum(dim=1))
    by_hand = (-torch.log(torch.sigmoid(z[0])) - torch.log(1 - torch.sigmoid(z[1]))).item() / 2
    terms = LseUnetLoss(any_weight=0.5).terms(out, y)
    assert terms["bce_any"].item() == pytest.approx(by_hand, rel=1e-6)
    assert terms["loss"].item() == pytest.approx(base + 0.5 * by_hand, rel=1e-6)
    assert "bce_any" not in LseUnetLoss().terms(out, y)
    with pytest.raises(ConfigError):
        LseUnetLoss(any_weight=-1)


def test_hloss_weight_zero_sends_no_gradient_through_the_hierarchy_term():
    maps = [m.clone().requires_grad_(True) for m in _maps((2.0, 1.0, 3.0, 3.0))]
    level_logits = [torch.zeros(1, 1, requires_grad=True) for _ in range(4)]
    out = Output(logits=level_logits[0], maps=maps, level_logits=level_logits)
    LseUnetLoss(hloss_weight=0.0)(out, torch.ones(1, 1)).backward()
    assert all(m.grad is None for m in maps)
    assert level_logits[0].grad.item() == pytest.approx(2 * (0.5 - 1))  # alpha_0 * (sigmoid(0) - y)
    LseUnetLoss(hloss_weight=1.0)(out, torch.ones(1, 1)).backward()
    # f1 (4x4, value 1) is pulled up towards Pool(f0) = 2 and down towards f2 = 3 through Pool(f1):
    # d/df1 [0.5 mean((2 - f1)^2)] = 0.5 * 2 (1 - 2) / 16 per pixel; d/df1 [0.25 mean((Pool(f1) - 3)^2)] =
    # 0.25 * 2 (1 - 3) / 4 * (1/4) per pixel
    expected = 0.5 * 2 * (1 - 2) / 16 + 0.25 * 2 * (1 - 3) / 4 / 4
    assert torch.allclose(maps[1].grad, torch.full_like(maps[1], expected))


def test_gap_loss_is_bce():
    out = Output(logits=torch.tensor([[2.0, -1.0]]))
    y = torch.tensor([[1.0, 0.0]])
    assert GapLoss()(out, y).item() == pytest.approx((_bce(2.0, 1) + _bce(-1.0, 0)) / 2, rel=1e-6)
    weighted = GapLoss(pos_weight=torch.tensor([2.0, 2.0]))(out, y).item()
    assert weighted == pytest.approx((_bce(2.0, 1, 2.0) + _bce(-1.0, 0, 2.0)) / 2, rel=1e-6)


def test_build_loss_dispatches_by_family():
    assert isinstance(build_loss(create_model("lse_unet_mobilenetv3_small_050")), LseUnetLoss)
    assert isinstance(build_loss("gap", pos_weight=torch.ones(5)), GapLoss)
    assert build_loss("lse_unet", pool="sum", hloss_weight=0.25).hloss_weight == 0.25
    with pytest.raises(ConfigError, match="family"):
        build_loss("vit")
    with pytest.raises(ConfigError):
        build_loss("gap", hloss_weight=1.0)
    with pytest.raises(ConfigError, match="needs an lse_unet Output"):
        LseUnetLoss()(Output(logits=torch.zeros(1, 5)), torch.zeros(1, 5))
