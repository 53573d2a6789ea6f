"""Resuming after an interruption gives the same weights as an uninterrupted run (smoke config, tiny budget)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train.engine as engine
from train.config import load_yaml, make_config
from train.train import train

SMOKE = Path(__file__).resolve().parents[2] / "train" / "configs" / "smoke.yaml"


def _cfg(out: Path):
    values = load_yaml(SMOKE) | {"out": str(out), "data": "phantom:8", "input_size": 64, "steps_per_epoch": 3,
                                  "batch_size": 4, "stage1_epochs": 1, "epochs": 2}
    return make_config(values)


class Interrupted(RuntimeError):
    pass


@pytest.mark.slow
def test_resume_matches_uninterrupted_run(tmp_path, monkeypatch):
    torch.set_num_threads(2)
    full = train(_cfg(tmp_path / "full"))

    real = engine.train_epoch
    calls = {"n": 0}

    def interrupt_third_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # stage 1 epoch 1, stage 2 epoch 1 done; die inside stage 2 epoch 2
            raise Interrupted("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "train_epoch", interrupt_third_epoch)
    with pytest.raises(Interrupted):
        train(_cfg(tmp_path / "resumed"))
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    state = torch.load(tmp_path / "resumed" / "state.pt", weights_only=False)
    assert (state["stage"], state["epoch"]) == (1, 0)
    monkeypatch.setattr(engine, "train_epoch", real)
    resumed = train(_cfg(tmp_path / "resumed"), resume=True)

    a, b = load_file(str(full / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    last_a = torch.load(full / "state.pt", weights_only=False)["model"]
    last_b = torch.load(resumed / "state.pt", weights_only=False)["model"]
    for key in last_a:
        torch.testing.assert_close(last_a[key], last_b[key], rtol=0, atol=1e-6, msg=key)
    hist_a = torch.load(full / "state.pt", weights_only=False)["history"]
    hist_b = torch.load(resumed / "state.pt", weights_only=False)["history"]
    assert [h["loss"] for h in hist_a] == pytest.approx([h["loss"] for h in hist_b], abs=1e-6)


@pytest.mark.slow
def test_stage_seconds_ends_a_stage_early_and_save_dtype_sets_the_weights(tmp_path):
    from ichdemo.models import load_pretrained

    torch.set_num_threads(2)
    cfg = make_config(load_yaml(SMOKE) | {"out": str(tmp_path / "run"), "data": "phantom:8", "input_size": 64,
                                          "steps_per_epoch": 2, "batch_size": 4, "stage1_epochs": 0, "epochs": 4,
                                          "stage_seconds": 1e-3, "save_dtype": "fp16"})
    out = train(cfg)
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 1 and "stage_seconds" in history[-1]["stopped_early"]  # 4 epochs asked, 1 run
    weights = load_file(str(out / "model.safetensors"))
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float16}
    model, config = load_pretrained(out)
    assert config["weights_dtype"] == "fp16" and next(model.parameters()).dtype == torch.float32
