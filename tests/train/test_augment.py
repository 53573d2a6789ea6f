"""Training augmentation: ``augment`` flip (unchanged) and geometric (ichdemo.data.augment, train.engine), and the
config checks that go with it (train.config)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ichdemo.data.augment import AffineRanges, identity, random_affine, warp
from ichdemo.errors import ConfigError
from train import engine
from train.config import TrainConfig, add_config_arguments, augment_mode, load_yaml, make_config, resolve_config

REPO = Path(__file__).resolve().parents[2]
CPU = engine.Runtime(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), amp=False, channels_last=False)


class Identity(nn.Module):
    """Stands in for a model: ``to_input`` only reads its ``ich_cfg`` (mean 0, std 1: no change)."""

    def __init__(self) -> None:
        super().__init__()
        self.ich_cfg = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


def _blob(n: int = 4, size: int = 64) -> torch.Tensor:
    """(n, 3, size, size) images in [0, 1] with one bright off-centre square each."""
    x = torch.zeros(n, 3, size, size)
    x[:, :, 12:24, 36:50] = 1.0
    return x


def _centroid(img: torch.Tensor) -> torch.Tensor:
    """(row, col) mass centre of a (H, W) image."""
    rows, cols = torch.meshgrid(torch.arange(img.shape[0]), torch.arange(img.shape[1]), indexing="ij")
    mass = img.sum()
    return torch.stack([(rows * img).sum() / mass, (cols * img).sum() / mass])


def test_random_affine_is_deterministic_under_a_seed():
    a = random_affine(8, torch.Generator().manual_seed(3))
    b = random_affine(8, torch.Generator().manual_seed(3))
    c = random_affine(8, torch.Generator().manual_seed(4))
    assert a.shape == (8, 2, 3) and torch.equal(a, b) and not torch.allclose(a, c)
    assert not torch.allclose(a[0], a[1])  # one transform per image


def test_warp_keeps_shape_and_identity_is_a_no_op():
    x = torch.rand(3, 3, 64, 64)
    assert torch.allclose(warp(x, identity(3)), x, atol=1e-5)
    y = warp(x, random_affine(3, torch.Generator().manual_seed(0)))
    assert y.shape == x.shape and y.dtype == x.dtype
    with pytest.raises(ValueError, match="theta"):
        warp(x, identity(2))


def test_translation_moves_the_content_by_the_drawn_shift():
    """A translation-only transform moves the blob's centre by shift * size / 2 pixels, in the drawn direction."""
    ranges = AffineRanges(rotate=0.0, translate=0.1, scale=(1.0, 1.0), shear=0.0)
    theta = random_affine(4, torch.Generator().manual_seed(1), ranges)
    x = _blob()
    y = warp(x, theta)
    for i in range(4):
        moved = _centroid(y[i, 0]) - _centroid(x[i, 0])
        shift_px = -theta[i, [1, 0], 2] * 64 / 2  # x_in = x_out - shift: theta's offset is minus the shift
        assert moved.abs().max() > 0.5  # it moved at all
        assert torch.allclose(moved, shift_px, atol=0.3)
        assert shift_px.abs().max() <= 0.1 * 64 + 1e-4


def test_geometric_ranges_rotate_and_scale_the_content():
    """The default ranges change the blob's position and size; zeros fill what comes from outside the image."""
    x = _blob(16)
    y = warp(x, random_affine(16, torch.Generator().manual_seed(0)))
    moved = torch.stack([(_centroid(y[i, 0]) - _centroid(x[i, 0])).norm() for i in range(16)])
    assert (moved > 1.0).float().mean() > 0.8
    area = y[:, 0].sum(dim=(1, 2)) / x[:, 0].sum(dim=(1, 2))
    assert area.min() < 0.9 and area.max() > 1.1  # scale 0.8-1.2 (area 0.64-1.44)
    full = warp(torch.ones(16, 1, 64, 64), random_affine(16, torch.Generator().manual_seed(0)))
    assert (full == 0).any() and full.min() >= 0  # zeros outside (air), nothing negative


def test_flip_path_is_unchanged():
    """augment true/flip draws exactly one torch.rand per batch from the generator and only flips, as before."""
    cfg = make_config({"augment": True})
    gen, ref = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    flip, theta = engine.draw_augmentation(cfg, 6, gen)
    expected = torch.rand(6, generator=ref) < 0.5
    assert theta is None and torch.equal(flip, expected)
    assert torch.equal(torch.rand(3, generator=gen), torch.rand(3, generator=ref))  # same stream afterwards
    assert engine.draw_augmentation(make_config({"augment": "flip"}), 6, torch.Generator().manual_seed(5))[0].equal(
        expected)
    batch = {"image": torch.rand(6, 3, 32, 32)}
    x = engine.to_input(batch, Identity(), CPU, flip)
    legacy = torch.where(flip[:, None, None, None], batch["image"].flip(-1), batch["image"])
    assert torch.equal(x, legacy)
    assert engine.draw_augmentation(make_config({"augment": False}), 6, gen) == (None, None)


def test_geometric_draw_is_deterministic_and_moves_the_input():
    cfg = make_config({"augment": "geometric", "augment_args": {"rotate": 20}})
    f1, t1 = engine.draw_augmentation(cfg, 4, torch.Generator().manual_seed(9))
    f2, t2 = engine.draw_augmentation(cfg, 4, torch.Generator().manual_seed(9))
    assert torch.equal(f1, f2) and torch.equal(t1, t2) and t1.shape == (4, 2, 3)
    batch = {"image": _blob()}
    x = engine.to_input(batch, Identity(), CPU, f1, t1)
    assert x.shape == batch["image"].shape
    assert (x - engine.to_input(batch, Identity(), CPU, f1)).abs().mean() > 0.01  # the warp did something


def test_config_accepts_and_refuses_augment_values():
    assert augment_mode(make_config({})) == "flip"  # the default is still true = flips
    assert augment_mode(make_config({"augment": "geometric"})) == "geometric"
    assert augment_mode(make_config({"augment": "none"})) == "none"
    with pytest.raises(ConfigError, match="augment must be"):
        make_config({"augment": "sideways"})
    with pytest.raises(ConfigError, match="geometric only"):
        make_config({"augment": True, "augment_args": {"rotate": 10}})
    with pytest.raises(ConfigError, match="unknown augment_args"):
        make_config({"augment": "geometric", "augment_args": {"spin": 10}})
    with pytest.raises(ConfigError, match="scale"):
        make_config({"augment": "geometric", "augment_args": {"scale": [1.2, 0.8]}})
    ranges = AffineRanges.from_dict({"rotate": 15, "scale": [0.9, 1.1]})
    assert ranges == AffineRanges(rotate=15.0, translate=0.1, scale=(0.9, 1.1), shear=10.0)


def test_geometric_refuses_the_feature_cache():
    with pytest.raises(ConfigError, match="feature_cache_gb"):
        make_config({"augment": "geometric", "feature_cache_gb": 1.0, "freeze_encoder": True})
    make_config({"augment": True, "feature_cache_gb": 1.0, "freeze_encoder": True})  # flips keep the cache
    # a config built by hand, past the validation: the engine skips the cache instead of serving stale features
    model = Identity()
    model.frozen_encoder = True
    hand = TrainConfig(augment="geometric", feature_cache_gb=1.0)
    assert engine.feature_cache(hand, model, CPU) is None
    assert engine.feature_cache(TrainConfig(augment=True, feature_cache_gb=1.0), model, CPU) is not None


def test_command_line_and_yaml():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    cfg = resolve_config(parser.parse_args(["--augment", "geometric", "--augment-args", "{rotate: 10}"]))
    assert cfg.augment == "geometric" and AffineRanges.from_dict(cfg.augment_args).rotate == 10.0
    assert resolve_config(parser.parse_args(["--augment", "false"])).augment is False
    path = REPO / "train" / "configs" / "ctich_lse_unet_aug_cpu.yaml"
    cfg = make_config(load_yaml(path))
    assert augment_mode(cfg) == "geometric" and cfg.feature_cache_gb == 0 and cfg.threads == 1
    assert cfg.model_args["pool_region"] == "intracranial"
    assert "77" in cfg.test_patients and np.isclose(AffineRanges.from_dict(cfg.augment_args).rotate, 30.0)


def test_a_geometric_run_repeats_under_its_seed(tmp_path):
    """Two tiny training runs with augment geometric and one seed give the same losses; flips alone differ."""
    from train.train import train

    torch.set_num_threads(1)
    values = load_yaml(REPO / "train" / "configs" / "smoke.yaml") | {
        "data": "phantom:6", "phantom_shape": "8x64x64", "input_size": 64, "epochs": 1, "steps_per_epoch": 3,
        "batch_size": 4, "encoder": "mobilenetv3_small_050", "pretrained": "none", "threads": 1, "progress": False}
    losses = {}
    for name, augment in (("a", "geometric"), ("b", "geometric"), ("flip", True)):
        out = train(make_config(values | {"out": str(tmp_path / name), "augment": augment}))
        losses[name] = [r["loss"] for r in json.loads((out / "history.json").read_text())]
    assert losses["a"] == losses["b"]
    assert losses["a"] != losses["flip"]
