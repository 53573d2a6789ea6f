"""The frozen-encoder feature cache (``feature_cache_gb``): same outputs as encoding every batch, the encoder run
once per slice and flip, the memory budget kept, and a training run that matches one without the cache."""

import json
from pathlib import Path

import pytest
import torch

import train.engine as engine
from ichdemo.models import create_model
from train.config import load_yaml, make_config
from train.train import train

SMOKE = Path(__file__).resolve().parents[2] / "train" / "configs" / "smoke.yaml"


@pytest.fixture(scope="module")
def frozen():
    torch.manual_seed(0)
    model = create_model("lse_unet", encoder="mobilenetv3_small_050", lse_mean=False)
    engine.freeze_encoder(model)
    return model.eval()


def _count_encoder_rows(model, monkeypatch) -> list[int]:
    rows: list[int] = []
    real = model.encode

    def counting(x):
        rows.append(int(x.shape[0]))
        return real(x)

    monkeypatch.setattr(model, "encode", counting)
    return rows


def test_cached_features_give_the_uncached_output_and_encode_each_slice_once(frozen, monkeypatch):
    x = torch.randn(4, 3, 64, 64)
    expected = frozen(x)
    rows = _count_encoder_rows(frozen, monkeypatch)
    cache = engine.FeatureCache(budget_gb=1.0)
    keys = [(1, k, False) for k in range(4)]
    first = engine.forward(frozen, x, cache, keys)
    assert rows == [4]
    torch.testing.assert_close(first.logits, expected.logits)  # fresh features: exact
    # a batch that repeats two cached slices in another order and brings one new slice (row 2 of x, flipped)
    mixed = torch.stack([x[3], x[2].flip(-1), x[0]])
    again = engine.forward(frozen, mixed, cache, [(1, 3, False), (1, 2, True), (1, 0, False)])
    assert rows == [4, 1]
    reference = frozen(mixed)
    for got, want in zip(again.maps, reference.maps):
        torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-3)  # cached rows are stored in float16
    assert len(cache.store) == 5


def test_budget_bounds_what_is_kept(frozen, monkeypatch):
    x = torch.randn(3, 3, 64, 64)
    one = sum(f[0].numel() * 2 for f in frozen.encode(x[:1]))  # bytes of one slice in float16
    rows = _count_encoder_rows(frozen, monkeypatch)
    cache = engine.FeatureCache(budget_gb=2.5 * one / 2**30)
    keys = [(0, k, False) for k in range(3)]
    engine.forward(frozen, x, cache, keys)
    assert len(cache.store) == 2 and cache.used == 2 * one
    out = engine.forward(frozen, x, cache, keys)  # the third slice is encoded again
    assert rows == [3, 1]
    torch.testing.assert_close(out.logits, frozen(x).logits, atol=2e-2, rtol=2e-3)


def test_keys_tell_datasets_and_flips_apart():
    class Loader:
        def __init__(self):
            self.dataset = object()

    a, b = Loader(), Loader()
    batch = {"index": torch.tensor([0, 1])}
    keys_a = engine.slice_keys(a, batch, torch.tensor([True, False]))
    keys_b = engine.slice_keys(b, batch)
    assert keys_a[0] != keys_a[1] and not set(keys_a) & set(keys_b)
    assert [k[1:] for k in keys_a] == [(0, True), (1, False)]


@pytest.mark.slow
def test_training_with_the_cache_matches_training_without(tmp_path):
    torch.set_num_threads(1)
    values = load_yaml(SMOKE) | {"data": "phantom:6", "phantom_shape": "8x64x64", "input_size": 64, "epochs": 3,
                                 "encoder": "mobilenetv3_small_050", "pretrained": "none"}
    runs = {}
    for name, gb in (("plain", 0.0), ("cached", 1.0)):
        out = train(make_config(values | {"out": str(tmp_path / name), "feature_cache_gb": gb}))
        runs[name] = json.loads((out / "history.json").read_text())
    plain, cached = runs["plain"], runs["cached"]
    assert plain[0]["loss"] == pytest.approx(cached[0]["loss"], rel=1e-3)  # epoch 1 encodes most slices anew
    for p, c in zip(plain[1:], cached[1:]):  # later epochs read float16 features: the same run up to rounding
        assert c["loss"] == pytest.approx(p["loss"], rel=2e-2)
        assert c["val_auroc"]["AVG"] == pytest.approx(p["val_auroc"]["AVG"], abs=0.05)
