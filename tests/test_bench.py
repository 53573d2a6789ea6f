"""`python -m bench.run --quick` produces every CPU figure (no timing assertions: tests check correctness)."""

import json
import math
from pathlib import Path

import pytest
import torch

from bench.run import main

CPU_KEYS = ("cpu_cam_over_forward", "cpu_pgc_over_cam", "lse_over_gap", "series_over_forward", "peak_rss_gb",
            "rethreshold_ms", "refine_share", "onnx_speedup")
GPU_KEYS = ("gpu_cam_over_forward", "gpu_cam_over_pgc", "gpu_lse_over_gap", "gpu_train_speedup")
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_bench_produces_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    md = tmp_path / "BENCHMARKS.md"
    gpu_json = REPO / "docs" / "bench_gpu.json"  # measured on a lent GPU (bench.gpu); merged, not re-measured
    assert main(["--quick", "--json", str(out), "--md", str(md), "--gpu-json", str(gpu_json)]) == 0
    result = json.loads(out.read_text())
    gpu = json.loads(gpu_json.read_text())
    for key in CPU_KEYS:
        assert isinstance(result[key], float) and math.isfinite(result[key]) and result[key] > 0, key
    for key in GPU_KEYS:
        assert result[key] == gpu[key] and result[key] > 0, key
    assert result["machine"]["cpu_threads"] == 2
    assert result["details"]["onnx"]["max_abs_diff"] < 1e-3
    text = md.read_text()
    assert "python -m bench.run" in text and result["machine"]["platform"] in text
    assert "## GPU" in text and gpu["machine"]["cuda"] in text and "--gpu-json" in text


@pytest.mark.slow
def test_gpu_bench_code_paths_on_cpu(tmp_path):
    """`bench.gpu --dry-run` runs every measurement (ours, pytorch-grad-cam, torchcam, LSE vs gap, training steps)
    at toy size on CPU, so the GPU script cannot break unnoticed between GPU loans."""
    from bench.gpu import main as gpu_main

    out = tmp_path / "gpu.json"
    torch.set_num_threads(1)
    assert gpu_main(["--dry-run", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    for key in GPU_KEYS:
        assert isinstance(result[key], float) and result[key] > 0, key
    for row in result["models"].values():
        assert {"forward_ips", "ours_ips", "pgc_ips", "torchcam_ips"} <= set(row)
