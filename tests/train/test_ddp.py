"""DistributedDataParallel through torchrun: 2 CPU processes with the gloo backend train and save a checkpoint."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ichdemo.models import load_pretrained, normalize_input

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "train" / "configs" / "smoke.yaml"


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "train.train", "--config", str(SMOKE), "--out", str(out), "--data", "phantom:8",
           "--input_size", "64", "--steps_per_epoch", "2", "--batch_size", "4", "--stage1_epochs", "1",
           "--epochs", "1", "--threads", "1", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    model, config = load_pretrained(out)
    prov = config["provenance"]
    assert prov["machine"]["processes"] == 2 and prov["machine"]["device"] == "cpu"
    history = json.loads((out / "history.json").read_text())
    assert [h["stage"] for h in history] == ["stage1", "main"]
    assert all(h["images"] == 2 * 2 * 4 for h in history)  # 2 steps x batch 4 on each of 2 ranks
    assert (out / "stage1" / "config.json").is_file() and (out / "split.json").is_file()
    with torch.no_grad():
        res = model(normalize_input(torch.rand(2, 3, 64, 64), model.ich_cfg))
    assert res.logits.shape == (2, 5) and res.maps[0].shape == (2, 5, 16, 16)
