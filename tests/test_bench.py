"""`python -m bench.run --quick` produces every CPU figure (no timing assertions: tests check correctness)."""

import json
import math

import pytest

from bench.run import main

CPU_KEYS = ("cpu_cam_over_forward", "cpu_pgc_over_cam", "lse_over_gap", "series_over_forward", "peak_rss_gb",
            "rethreshold_ms", "onnx_speedup")
GPU_KEYS = ("gpu_cam_over_forward", "gpu_cam_over_pgc")


@pytest.mark.slow
def test_quick_bench_produces_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    md = tmp_path / "BENCHMARKS.md"
    assert main(["--quick", "--json", str(out), "--md", str(md)]) == 0
    result = json.loads(out.read_text())
    for key in CPU_KEYS:
        assert isinstance(result[key], float) and math.isfinite(result[key]) and result[key] > 0, key
    for key in GPU_KEYS:
        assert key in result  # null without a GPU
    assert result["machine"]["cpu_threads"] == 2
    assert result["details"]["onnx"]["max_abs_diff"] < 1e-3
    text = md.read_text()
    assert "python -m bench.run" in text and result["machine"]["platform"] in text
