"""Checkpoint folders: config.json + (sharded) model.safetensors, rebuilt without network."""

from __future__ import annotations

import json

import pytest
import torch

from ichdemo.constants import CLASSES
from ichdemo.errors import ModelError
from ichdemo.models import create_model, load_pretrained, save_pretrained

TINY = "lse_unet_mobilenetv3_small_050"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = create_model(TINY).eval()
    with torch.no_grad():  # move BN statistics off their defaults so a missed buffer would show
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    return m


def _outputs(m, x):
    with torch.no_grad():
        return m(x)


def test_round_trip_same_outputs_and_config(model, tmp_path):
    extra = {"class_thresholds": [0.1, 0.2, 0.3, 0.4, 0.5], "provenance": {"data": "phantoms", "epochs": 1}}
    folder = save_pretrained(model, tmp_path / "ckpt", extra)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architecture"] == "lse_unet" and cfg["model_args"]["encoder"] == "mobilenetv3_small_050"
    assert cfg["classes"] == list(CLASSES)
    assert cfg["window"] == {"centre": 25.0, "width": 130.0} and cfg["input_size"] == [3, 512, 512]
    assert len(cfg["mean"]) == 3 and len(cfg["std"]) == 3
    assert cfg["class_thresholds"] == extra["class_thresholds"] and cfg["provenance"]["epochs"] == 1
    assert cfg["weights_dtype"] == "fp32"

    loaded, cfg2 = load_pretrained(folder)
    assert cfg2 == cfg and not loaded.training
    assert loaded.ich_cfg["class_thresholds"] == extra["class_thresholds"]
    x = torch.randn(2, 3, 64, 64)
    a, b = _outputs(model, x), _outputs(loaded, x)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.maps[0], b.maps[0])


def test_gap_round_trip(tmp_path):
    torch.manual_seed(0)
    gap = create_model("gap_mobilenetv3_small_050").eval()
    loaded, cfg = load_pretrained(save_pretrained(gap, tmp_path / "gap"))
    assert cfg["architecture"] == "gap" and loaded.family == "gap"
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(_outputs(gap, x).logits, _outputs(loaded, x).logits)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_weights(model, tmp_path, dtype):
    full = save_pretrained(model, tmp_path / "fp32")
    half = save_pretrained(model, tmp_path / dtype, dtype=dtype)
    size = (half / "model.safetensors").stat().st_size
    assert size < 0.6 * (full / "model.safetensors").stat().st_size
    loaded, cfg = load_pretrained(half)
    assert cfg["weights_dtype"] == dtype
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.randn(1, 3, 64, 64)
    ref, got = _outputs(model, x).maps[0], _outputs(loaded, x).maps[0]
    assert (ref - got).abs().max() < 0.05 * ref.abs().max()


def test_sharded_above_the_shard_size(model, tmp_path):
    folder = save_pretrained(model, tmp_path / "sharded", max_shard_size="300KB")
    shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
    assert len(shards) >= 2 and (folder / "model.safetensors.index.json").is_file()
    assert not (folder / "model.safetensors").exists()
    loaded, _ = load_pretrained(folder)
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(_outputs(model, x).logits, _outputs(loaded, x).logits)
    save_pretrained(model, folder)  # re-save unsharded: stale shards and index must go
    assert sorted(p.name for p in folder.glob("model*")) == ["model.safetensors"]
    load_pretrained(folder)


def test_clear_errors(model, tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_pretrained(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        load_pretrained(tmp_path / "empty")

    folder = save_pretrained(model, tmp_path / "ok")
    cfg = json.loads((folder / "config.json").read_text())

    def write(changes: dict) -> None:
        (folder / "config.json").write_text(json.dumps({**cfg, **changes}))

    write({"architecture": "unet_plus_plus"})
    with pytest.raises(ModelError, match="unknown model"):
        load_pretrained(folder)
    write({"classes": ["IPH", "IVH", "SAH"]})
    with pytest.raises(ModelError, match="3 classes but the model has 5"):
        load_pretrained(folder)
    write({"classes": ["a", "b", "c", "d", "e"]})
    with pytest.raises(ModelError, match="needs"):
        load_pretrained(folder)
    write({"model_args": {**cfg["model_args"], "encoder": "resnet10t"}})  # weights of another encoder
    with pytest.raises(ModelError, match="do not fit"):
        load_pretrained(folder)
    write({"model_args": {**cfg["model_args"], "decoder_channels": [8, 16, 24, 32]}})  # same keys, other shapes
    with pytest.raises(ModelError, match="shape"):
        load_pretrained(folder)
    write({})
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="weights are missing"):
        load_pretrained(folder)


def test_three_class_model_needs_expected_classes_none(tmp_path):
    m = create_model(TINY, num_classes=3)
    folder = save_pretrained(m, tmp_path / "three")
    with pytest.raises(ModelError, match="needs"):
        load_pretrained(folder)
    loaded, cfg = load_pretrained(folder, expected_classes=None)
    assert cfg["classes"] == list(CLASSES[:3]) and loaded.levels[0].head.out_channels == 3


def test_save_refuses_foreign_models_and_bad_dtype(model, tmp_path):
    with pytest.raises(ModelError, match="ich_cfg"):
        save_pretrained(torch.nn.Linear(2, 2), tmp_path / "x")
    with pytest.raises(ModelError, match="dtype"):
        save_pretrained(model, tmp_path / "x", dtype="int8")
