"""Heatmaps: Grad-CAM from one forward pass, LSE maps, guided backprop, integrated gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from ichdemo.cam import (
    CamResult,
    GradCAM,
    _Logits,
    black_reference,
    guided_backprop,
    heatmaps,
    integrated_gradients,
    lse_heatmaps,
)
from ichdemo.errors import ConfigError, ModelError
from ichdemo.models import create_model, normalize_input

GAP = "gap_mobilenetv3_small_050"
LSE = "lse_unet_mobilenetv3_small_050"


def _model(name: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(name, **kw).eval()
    with torch.no_grad():  # random BN statistics and a livelier head so the maps are not near-constant
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.data.uniform_(0.5, 1.5)
    return model


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def _x(b: int = 2, size: int = 128, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def gap_model():
    return _model(GAP)


@pytest.fixture(scope="module")
def lse_model():
    return _model(LSE)


def test_gradcam_shapes_and_normalisation(gap_model):
    x = _x()
    with GradCAM(gap_model) as cam:
        res = cam(x)
    assert isinstance(res, CamResult) and res.method == "gradcam"
    assert res.raw.shape == (2, 5, 4, 4) and res.normalized.shape == (2, 5, 4, 4)
    assert res.upsampled.shape == (2, 5, 128, 128)
    assert (res.raw >= 0).all()
    peak = res.normalized.amax(dim=(-2, -1))
    assert torch.allclose(peak[res.raw.amax(dim=(-2, -1)) > 0], torch.tensor(1.0), atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(res.logits, gap_model(x).logits, atol=1e-6)
    assert torch.allclose(res.probs, torch.sigmoid(res.logits))


def test_gradcam_equals_the_closed_form_cam_of_a_gap_linear_head():
    """With GAP + linear (a ResNet head), d logit_c / d A_k(i) = W_ck / n, so Grad-CAM = ReLU(sum_k W_ck A_k) / n."""
    gap_model = _model("gap", backbone="resnet10t")
    x = _x()
    acts = {}
    handle = gap_model.cam_layer.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    with torch.no_grad():
        gap_model(x)
    handle.remove()
    a = acts["a"]
    weight = gap_model.backbone.get_classifier().weight  # (5, K)
    expected = torch.relu(torch.einsum("ck,bkhw->bchw", weight, a)) / (a.shape[-1] * a.shape[-2])
    res = GradCAM(gap_model)(x)
    assert torch.allclose(res.raw, expected, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("name", [GAP, "gap_resnet10t"])
def test_gradcam_matches_pytorch_grad_cam(name):
    """Same maps as jacobgil's GradCAM on the same layer, after its min-max normalisation (feature resolution)."""
    pgc = pytest.importorskip("pytorch_grad_cam", reason="grad-cam (requirements-dev.txt) is the reference")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = _model(name) if name == GAP else _model("gap", backbone="resnet10t")
    x = _x(2, 160)
    ours = GradCAM(model)(x).raw.numpy()  # (2, 5, 5, 5)

    class AtFeatureResolution(pgc.GradCAM):
        def get_target_width_height(self, input_tensor):
            return None  # scale_cam_image(cam, None): min-max normalise, no cv2 resize

    with AtFeatureResolution(_Logits(model), [model.cam_layer]) as ref:
        for c in range(5):
            theirs = ref(x, targets=[ClassifierOutputTarget(c)] * 2)  # (2, 5, 5)
            mine = ours[:, c] - ours[:, c].min(axis=(-2, -1), keepdims=True)
            mine = mine / (1e-7 + mine.max(axis=(-2, -1), keepdims=True))
            assert np.abs(theirs - mine).max() < 1e-4, c
    assert _hooks(model) == 0


def test_gradcam_releases_hooks_and_leaves_no_grads(gap_model):
    x = _x(1, 64)
    with GradCAM(gap_model) as cam:
        assert _hooks(gap_model) == 1
        cam(x)
        with torch.no_grad():  # a plain forward inside the `with` is left alone (grad mode untouched)
            out = gap_model(x)
            assert not torch.is_grad_enabled() and out.logits.grad_fn is None
    assert _hooks(gap_model) == 0
    GradCAM(gap_model)(x)  # without `with`: hooks around the call only
    assert _hooks(gap_model) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with GradCAM(gap_model):
            raise RuntimeError("boom")
    assert _hooks(gap_model) == 0
    assert all(p.grad is None for p in gap_model.parameters())
    assert torch.is_grad_enabled()


def test_gradcam_in_two_threads_on_one_model(gap_model):
    """Two requests at once on the app's one model instance: each GradCAM hooks the same layer, and each must act on
    its own thread's forward only (both used to replace the activation: 'Tensor ... not used in the graph')."""
    import threading

    xs = [_x(1, 64), _x(1, 64) + 0.5]
    alone = [GradCAM(gap_model)(x).raw for x in xs]
    meet = threading.Barrier(2, timeout=30)

    def both_inside(*_) -> None:  # both forwards are at the layer at once
        meet.wait()

    wait = gap_model.cam_layer.register_forward_pre_hook(both_inside)
    out, errors = [None, None], []

    def run(i: int) -> None:
        try:
            out[i] = GradCAM(gap_model)(xs[i]).raw
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        wait.remove()
    assert not errors, errors
    assert all(torch.allclose(o, a, atol=1e-6) for o, a in zip(out, alone))
    assert _hooks(gap_model) == 0


def test_gradcam_batched_equals_per_image_and_both_grad_modes(gap_model):
    x = _x(3, 96)
    batch = GradCAM(gap_model, grad_mode="batched")(x)
    loop = GradCAM(gap_model, grad_mode="loop")(x)
    assert torch.allclose(batch.raw, loop.raw, atol=1e-7)
    for i in range(3):
        single = GradCAM(gap_model)(x[i : i + 1])
        assert torch.allclose(single.raw, batch.raw[i : i + 1], atol=1e-6, rtol=1e-4)
    with pytest.raises(ConfigError):
        GradCAM(gap_model, grad_mode="vmap")


def test_gradcam_works_under_inference_mode_and_no_grad(gap_model):
    with torch.inference_mode():
        x = _x(1, 64)
        res = GradCAM(gap_model)(x)
    ref = GradCAM(gap_model)(_x(1, 64))
    assert torch.allclose(res.raw, ref.raw)
    with torch.no_grad():
        assert torch.allclose(GradCAM(gap_model)(_x(1, 64)).raw, ref.raw)


def test_gradcam_in_bf16_autocast_is_close_to_fp32(gap_model):
    x = _x(2, 128)
    ref = GradCAM(gap_model)(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = GradCAM(gap_model)(x)
    assert half.raw.dtype == torch.float32 and half.upsampled.dtype == torch.float32
    assert (half.normalized - ref.normalized).abs().max() < 0.1


@pytest.mark.parametrize("kwargs", [{}, {"lse_r": 5.0}])
def test_gradcam_at_f0_is_the_lse_map_over_n(kwargs):
    """METHOD.md: Grad-CAM at the f0 layer is a rescaled f0: exactly (r / n) * ReLU(f0) for every class, which is
    the LSE map (r * ReLU(f0) with lse_mean) divided by n."""
    model = _model(LSE, **kwargs)
    x = _x(2, 96)
    lse = lse_heatmaps(model, x)
    grad = GradCAM(model)(x)  # on model.cam_layer = the conv that outputs f0
    h, w = lse.raw.shape[-2:]
    assert (h, w) == (24, 24) and lse.raw.max() > 0
    assert torch.allclose(grad.raw, lse.raw / (h * w), atol=1e-7, rtol=1e-4)
    assert torch.allclose(grad.normalized, lse.normalized, atol=1e-5)
    assert torch.allclose(grad.logits, lse.logits)


@pytest.mark.parametrize("lse_mean", [True, False])
def test_lse_map_is_relu_of_pixel_logits_that_bound_the_slice_logit(lse_mean):
    """Pixel logits are on the slice logit's scale: LSE pooling lies in [max - log n, max] of them, so a positive
    slice always has a non-empty map; with the paper's log-sum (no lse_mean) they carry the + log n that Grad-CAM's
    ReLU(f0) lacks."""
    model = _model(LSE, lse_mean=lse_mean)
    with torch.no_grad():
        for level in model.levels:  # the trained regime of a log-sum model: f0 below zero everywhere
            level.head.bias.fill_(-2.5)
    x = _x(2, 96)
    lse = lse_heatmaps(model, x)
    with torch.no_grad():
        f0 = model(x).maps[0].float()
    n = f0.shape[-1] * f0.shape[-2]
    expected = model.lse_r * f0 + (0.0 if lse_mean else math.log(n))
    assert torch.allclose(lse.pixel_logits, expected, atol=1e-5)
    assert torch.allclose(lse.raw, torch.relu(expected), atol=1e-5)
    top = lse.pixel_logits.amax(dim=(-2, -1))
    assert (lse.logits <= top + 1e-4).all() and (lse.logits >= top - math.log(n) - 1e-4).all()
    assert (lse.raw.amax(dim=(-2, -1))[lse.logits > 0] > 0).all()  # a positive call always shows where
    if not lse_mean:
        assert (f0 < 0).all() and GradCAM(model)(x).raw.max() == 0  # Grad-CAM at f0 sees nothing here
        assert lse.raw.max() > 0


def test_map_floor_at_the_gate_gives_every_open_gate_a_map(tmp_path):
    """``map_floor`` (``train.calibrate --map-floor gate``): raw = ReLU(pixel logits - floor). At floor 0 a gate
    below p = 0.5 can open on a map that is zero everywhere; with each class's floor at its gate's logit, every slice
    that passes the gate has a map (LSE never exceeds the largest pixel logit). The floor is rebuilt from
    ``model_args`` and carried by the ONNX export."""
    from ichdemo.onnx_model import OnnxModel, export_onnx

    model = _model(LSE)
    with torch.no_grad():
        for level in model.levels:  # every pixel logit below 0, as for a trained model's rare subtypes
            level.head.bias.fill_(-2.5)
    x = _x(4, 96)
    paper = lse_heatmaps(model, x)
    assert paper.raw.max() == 0 and (paper.logits < 0).all()
    gate = paper.logits[1:].min(dim=0).values - 0.01  # open for slices 1-3 of every class
    model.set_map_floor(gate.tolist())
    res = lse_heatmaps(model, x)
    assert torch.allclose(res.raw, torch.relu(paper.pixel_logits - gate.view(1, -1, 1, 1)))
    opened = res.logits > gate
    assert opened[1:].all() and (res.raw.amax(dim=(-2, -1))[opened] > 0).all()
    assert model.ich_cfg["model_args"]["map_floor"] == pytest.approx(gate.tolist())

    rebuilt = create_model(model.ich_cfg["architecture"], **model.ich_cfg["model_args"]).eval()
    rebuilt.load_state_dict(model.state_dict())  # the floor is not a weight: it comes from model_args
    assert torch.equal(lse_heatmaps(rebuilt, x).raw, res.raw)
    pytest.importorskip("onnxruntime")
    got = OnnxModel(export_onnx(model, tmp_path / "m.onnx", 96)).run(x.numpy())
    np.testing.assert_allclose(got["heatmap"], res.raw.numpy(), atol=1e-3)
    model.set_map_floor(None)
    assert torch.equal(lse_heatmaps(model, x).raw, paper.raw) and model.ich_cfg["model_args"]["map_floor"] is None


def test_lse_heatmaps_fields(lse_model):
    x = _x(2, 128)
    res = lse_heatmaps(lse_model, x)
    with torch.no_grad():
        out = lse_model(x)
    assert res.method == "lse" and res.raw.shape == (2, 5, 32, 32) and res.upsampled.shape == (2, 5, 128, 128)
    assert torch.allclose(res.raw, torch.relu(3.0 * out.maps[0]))
    assert torch.allclose(res.pixel_logits, 3.0 * out.maps[0])
    assert _hooks(lse_model) == 0
    with pytest.raises(ModelError, match="lse_unet"):
        lse_heatmaps(_model(GAP), x)


def test_heatmaps_dispatch(gap_model, lse_model):
    x = _x(1, 64)
    assert heatmaps(gap_model, x).method == "gradcam"
    assert heatmaps(lse_model, x).method == "lse"
    assert heatmaps(lse_model, x, method="gradcam").method == "gradcam"
    with pytest.raises(ConfigError, match="method"):
        heatmaps(gap_model, x, method="smoothgrad")


def test_guided_backprop_modifies_relu_gradients_and_restores_the_model():
    model = _model("gap", backbone="resnet10t")  # in-place ReLUs, as in timm ResNets
    x = _x(2, 64)
    gb = guided_backprop(model, x)
    assert gb.shape == (2, 5, 64, 64) and (gb >= 0).all() and gb.amax() > 0
    assert all(m.inplace for m in model.modules() if isinstance(m, nn.ReLU))
    assert _hooks(model) == 0
    # plain input gradient, same reduction: guided backprop must differ (its ReLU rule is in effect)
    xg = x.clone().requires_grad_(True)
    model(xg).logits[:, 0].sum().backward()
    plain = torch.relu(xg.grad.sum(dim=1))
    assert not torch.allclose(plain, gb[:, 0], atol=1e-6)
    model.zero_grad(set_to_none=True)
    # per-image independence: image 1 alone gives its row of the batch
    assert torch.allclose(guided_backprop(model, x[1:]), gb[1:], atol=1e-6)
    res = heatmaps(model, x, method="guided_backprop")
    assert res.raw.shape == res.upsampled.shape == (2, 5, 64, 64)


def test_integrated_gradients_completeness_from_the_black_image(gap_model):
    """IG attributions sum to logit(x) - logit(black) (per image and class), black = normalised intensity 0."""
    x = normalize_input(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3)), gap_model.ich_cfg)
    black = black_reference(gap_model, x)
    assert torch.allclose(black, normalize_input(torch.zeros(1, 3, 1, 1), gap_model.ich_cfg))
    ig = integrated_gradients(gap_model, x, steps=64, reduce="sum")  # signed channel sum
    with torch.no_grad():
        delta = gap_model(x).logits - gap_model(black.expand_as(x)).logits
    total = ig.sum(dim=(-2, -1))
    assert torch.allclose(total, delta, atol=0.05 * delta.abs().max().item())
    relu = integrated_gradients(gap_model, x, steps=8)
    assert relu.shape == (2, 5, 64, 64) and (relu >= 0).all()
    with pytest.raises(ConfigError):
        integrated_gradients(gap_model, x, steps=0)
    with pytest.raises(ConfigError, match="reduce"):
        integrated_gradients(gap_model, x, steps=2, reduce="mean")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_bf16_gradcam_and_lse():
    gap, lse = _model(GAP).cuda(), _model(LSE).cuda()
    x = _x(4, 256).cuda()
    ref = GradCAM(gap)(x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        half = GradCAM(gap)(x)
        lse_half = lse_heatmaps(lse, x)
    assert half.raw.is_cuda and half.raw.dtype == torch.float32
    assert (half.normalized - ref.normalized).abs().max() < 0.1
    assert lse_half.upsampled.shape == (4, 5, 256, 256)
    grad = GradCAM(lse)(x)
    n = lse_half.raw.shape[-1] * lse_half.raw.shape[-2]
    assert torch.allclose(grad.raw, lse_heatmaps(lse, x).raw / n, atol=1e-6, rtol=1e-3)
