"""Speed and memory benchmarks, each a ratio against a baseline measured in the same run and process.

    python -m bench.run --json docs/bench.json            # full CPU run (2 threads), then docs/BENCHMARKS.md
    python -m bench.run --quick --json /tmp/bench.json    # CI: small sizes, checks every figure is produced
    python -m bench.run --json docs/bench.json --md docs/BENCHMARKS.md --gpu-json docs/bench_gpu.json \
        --browser-json docs/bench_browser.json            # GPU figures from a bench.gpu run on a GPU machine,
                                                          # browser figures from a bench.browser run

Figures (JSON keys; null where not measured, e.g. GPU figures without a GPU):
    cpu_cam_over_forward   all-class Grad-CAM time / forward-only time, one 3x512x512 slice, 2 threads (target <= 1.25)
    cpu_pgc_over_cam       pytorch-grad-cam time for the five classes / ours                          (target >= 10)
    gpu_cam_over_forward   GPU throughput of ours / forward-only, batch 32 at 512 px, bf16          (target >= 0.85)
    gpu_cam_over_pgc       GPU throughput of ours / pytorch-grad-cam                                 (target >= 50)
    gpu_lse_over_gap       the same as lse_over_gap on the GPU, batch 32, bf16                        (target >= 0.6)
    gpu_train_speedup      training step bf16 + channels_last / fp32 eager, GPU                       (no target)
    lse_over_gap           throughput of LSE-UNet forward with heatmaps / gap forward, same encoder  (target >= 0.6)
    series_over_forward    40-slice DICOM series end to end / 40 forward passes, default model       (target <= 1.3)
    peak_rss_gb            peak resident memory of a fresh process running the series end to end     (target <= 2.5)
    rethreshold_ms         one slider move over a cached 40-slice series: Algorithm 1, refinement, volumes (<= 100)
    refine_share           the refinement's time (intracranial mask, blood regions) / the series end to end (<= 0.15)
    onnx_speedup           torch eager time / ONNX Runtime time, default model, CPU                  (target >= 1.3)
Per-model details go under "models". Medians over repeats.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from ichdemo import hub
from ichdemo.cam import heatmaps
from ichdemo.inference import LoadedModel
from ichdemo.io import load_volume
from ichdemo.io.dicom_write import write_dicom_series
from ichdemo.models import create_model
from ichdemo.models.config import ModelConfig
from ichdemo.models.registry import normalize_input
from ichdemo.phantom import generate_phantom
from ichdemo.pipeline import analyze, load_model
from ichdemo.quantify import volumes_ml
from ichdemo.refine import refine

FALLBACK_MODELS = ("lse_unet_tf_efficientnet_lite0", "gap_tf_efficientnet_lite0", "gap_mobilenetv2_100")


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` in seconds after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine() -> dict:
    """What ran the benchmark."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": sys.version.split()[0],
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def bench_models() -> list[tuple[str, torch.nn.Module]]:
    """Bundled models when there are any, else untrained models of the intended architectures (same cost)."""
    names = hub.bundled_names()
    if names:
        return [(n, load_model(n, device="cpu").model) for n in names]
    return [(n, create_model(n, pretrained=False).eval()) for n in FALLBACK_MODELS]


def pgc_all_classes(model: torch.nn.Module, x: torch.Tensor) -> None:
    """pytorch-grad-cam for the five classes, the way its users run it: one call per class target."""
    from pytorch_grad_cam import GradCAM as PGC
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    wrapped = _LogitsOnly(model)
    with PGC(model=wrapped, target_layers=[model.cam_layer]) as cam:
        for c in range(5):
            cam(input_tensor=x, targets=[ClassifierOutputTarget(c)] * x.shape[0])


class _LogitsOnly(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).logits


def cpu_per_model(models, size: int, repeats: int, with_pgc: bool) -> dict:
    """Forward, our heatmaps and (gap models) pytorch-grad-cam on one slice, per model."""
    x = torch.rand(1, 3, size, size)
    out = {}
    for name, model in models:
        xn = normalize_input(x, model.ich_cfg)
        with torch.inference_mode():
            fwd = median_time(lambda: model(xn), repeats)
        cam = median_time(lambda: heatmaps(model, xn), repeats)
        row = {"family": model.family, "forward_s": fwd, "heatmaps_s": cam, "cam_over_forward": cam / fwd}
        if with_pgc and model.family == "gap":
            pgc = median_time(lambda: pgc_all_classes(model, xn), max(1, repeats // 2))
            row |= {"pgc_s": pgc, "pgc_over_cam": pgc / cam}
        out[name] = row
    return out


def lse_over_gap(size: int, repeats: int, encoder: str = "tf_efficientnet_lite0") -> dict:
    """Throughput of the LSE-UNet (forward gives the heatmaps) over the gap model on the same encoder."""
    x = torch.rand(4, 3, size, size)
    gap = create_model(f"gap_{encoder}", pretrained=False).eval()
    lse = create_model(f"lse_unet_{encoder}", pretrained=False).eval()
    with torch.inference_mode():
        t_gap = median_time(lambda: gap(x), repeats)
    t_lse = median_time(lambda: heatmaps(lse, x), repeats)
    return {"encoder": encoder, "gap_forward_s": t_gap, "lse_heatmaps_s": t_lse, "ratio": t_gap / t_lse}


def series_and_rethreshold(lm: LoadedModel, slices: int, repeats: int) -> dict:
    """End-to-end series time against slices x forward, and the cost of one threshold change."""
    ph = generate_phantom(seed=1, subtypes=("IPH", "SDH"), shape=(slices, 512, 512))
    with tempfile.TemporaryDirectory() as tmp:
        write_dicom_series(ph.hu, ph.spacing, tmp)

        def end_to_end():
            vol = load_volume(tmp)
            a = analyze(lm, vol)
            return a, volumes_ml(a.labels(), vol.spacing)

        t_series = median_time(end_to_end, max(1, repeats // 2), warmup=1)
        analysis, _ = end_to_end()
    x = normalize_input(torch.rand(1, 3, lm.cfg.input_size, lm.cfg.input_size), lm.model.ich_cfg)
    with torch.inference_mode():
        t_fwd = median_time(lambda: lm.model(x), repeats)
    t = lm.thresholds
    moved = [t.replace(mask_thresholds=tuple(min(255.0, m + d) for m in t.mask_thresholds)) for d in (5, 10, 15)]
    t_rethr = median_time(lambda: [volumes_ml(analysis.labels(m), analysis.spacing) for m in moved], repeats) / 3
    t_raw = median_time(lambda: [analysis.labels(m, refined=False) for m in moved], repeats) / 3

    raw, a = analysis.labels(t, refined=False), analysis
    # what a series spends on the refinement: its anatomy (intracranial mask, blood band) once, then the regions
    t_refine = median_time(lambda: refine(a.hu, a.probs, a.maps255, raw, t.class_thresholds, a.spacing,
                                          a.refine_params), repeats)
    return {
        "slices": slices,
        "series_s": t_series,
        "forward_s": t_fwd,
        "series_over_forward": t_series / (slices * t_fwd),
        "rethreshold_ms": t_rethr * 1000,
        "rethreshold_raw_ms": t_raw * 1000,
        "refine_s": t_refine,
        "refine_share": t_refine / t_series,
    }


def _series_peak_rss(folder: str) -> float:
    """Child-process body: load the default model, read and analyse the DICOM series in ``folder``, measure the
    volumes; the process's peak RSS (GB)."""
    torch.set_num_threads(2)
    lm = default_loaded(512)
    vol = load_volume(folder)
    volumes_ml(analyze(lm, vol).labels(), vol.spacing)
    return peak_rss_gb()


def peak_rss_gb() -> float:
    """This process's peak resident memory: VmHWM on Linux (its own address space; getrusage's ru_maxrss survives
    fork and exec, so a child would report its parent's peak), ru_maxrss elsewhere."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024**2
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def series_peak_rss(slices: int) -> float:
    """Peak resident memory of a fresh process that only reads, analyses and measures one series (what a user's
    ``predict`` or one app analysis costs): not this process, which holds every bundled model by now, and not the
    phantom's generation (about 2 GB of float64 work for 40 slices), which happens here."""
    import multiprocessing

    ph = generate_phantom(seed=1, subtypes=("IPH", "SDH"), shape=(slices, 512, 512))
    with tempfile.TemporaryDirectory() as tmp:
        write_dicom_series(ph.hu, ph.spacing, tmp)
        del ph
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            return pool.apply(_series_peak_rss, (tmp,))


def onnx_vs_torch(lm: LoadedModel, repeats: int) -> dict:
    """ONNX Runtime against torch eager for the default model on CPU, logits and heatmaps, with the difference."""
    from ichdemo.onnx_model import ExportWrapper, OnnxModel, export_onnx

    xn = normalize_input(torch.rand(1, 3, lm.cfg.input_size, lm.cfg.input_size), lm.model.ich_cfg)
    with tempfile.TemporaryDirectory() as tmp:
        ort = OnnxModel(export_onnx(lm.model, Path(tmp) / "model.onnx", lm.cfg.input_size), threads=2)
        wrapper = ExportWrapper(lm.model).eval()
        try:
            with torch.inference_mode():
                ref = [t.numpy() for t in wrapper(xn)]
                t_torch = median_time(lambda: wrapper(xn), repeats)
        finally:
            wrapper.release()
        got = ort.run(xn.numpy())
        t_ort = median_time(lambda: ort.run(xn.numpy()), repeats)
    diff = max(float(np.abs(ref[0] - got["logits"]).max()), float(np.abs(ref[1] - got["heatmap"]).max()))
    return {"torch_s": t_torch, "onnx_s": t_ort, "speedup": t_torch / t_ort, "max_abs_diff": diff}


def default_loaded(size: int) -> LoadedModel:
    """The default bundled model, or an untrained lse_unet lite0 at ``size`` when none is bundled."""
    try:
        return load_model(hub.default_model(), device="cpu")
    except Exception:  # no bundled model yet: timing does not depend on the weights
        from ichdemo.hub import ModelRef

        model = create_model(FALLBACK_MODELS[0], pretrained=False).eval()
        cfg = ModelConfig.from_dict(dict(model.ich_cfg, input_size=[3, size, size]))
        return LoadedModel(model, cfg, ModelRef(FALLBACK_MODELS[0], Path("."), "untrained"), torch.device("cpu"))


def run(quick: bool) -> dict:
    """All CPU figures (GPU figures when CUDA is present are left to bench.gpu)."""
    torch.set_num_threads(2)
    size, repeats, slices = (256, 3, 8) if quick else (512, 7, 40)
    models = bench_models()
    per_model = cpu_per_model(models, size, repeats, with_pgc=True)
    gap_rows = [r for r in per_model.values() if r["family"] == "gap"]
    lm = default_loaded(size)
    series = series_and_rethreshold(lm, slices, repeats)
    result = {
        "quick": quick,
        "input_size": size,
        "machine": machine(),
        "models": per_model,
        "cpu_cam_over_forward": max((r["cam_over_forward"] for r in gap_rows), default=None),
        "cpu_pgc_over_cam": min((r["pgc_over_cam"] for r in gap_rows if "pgc_over_cam" in r), default=None),
        "gpu_cam_over_forward": None,
        "gpu_cam_over_pgc": None,
        "gpu_lse_over_gap": None,
        "gpu_train_speedup": None,
        "lse_over_gap": None,
        "series_over_forward": series["series_over_forward"],
        "peak_rss_gb": series_peak_rss(slices),
        "rethreshold_ms": series["rethreshold_ms"],
        "refine_share": series["refine_share"],
        "onnx_speedup": None,
        "details": {"series": series},
    }
    lse = lse_over_gap(size, repeats)
    result["lse_over_gap"] = lse["ratio"]
    result["details"]["lse_over_gap"] = lse
    onnx = onnx_vs_torch(lm, repeats)
    result["onnx_speedup"] = onnx["speedup"]
    result["details"]["onnx"] = onnx
    return result


TARGETS = {
    "cpu_cam_over_forward": ("<=", 1.25, "all-class Grad-CAM time / forward time, CPU, one slice"),
    "cpu_pgc_over_cam": (">=", 10, "pytorch-grad-cam time (5 classes) / ours, CPU"),
    "gpu_cam_over_forward": (">=", 0.85, "Grad-CAM throughput / forward throughput, GPU batch 32, bf16"),
    "gpu_cam_over_pgc": (">=", 50, "ours / pytorch-grad-cam throughput, GPU"),
    "gpu_lse_over_gap": (">=", 0.6, "LSE-UNet forward+heatmaps throughput / gap forward, same encoder, GPU"),
    "gpu_train_speedup": (
        ">=", 1.0, "training step bf16 + channels_last / fp32 eager, GPU (no target set; 1 = no gain)"
    ),
    "lse_over_gap": (">=", 0.6, "LSE-UNet forward+heatmaps throughput / gap forward, same encoder"),
    "series_over_forward": ("<=", 1.3, "series end to end / (slices x forward)"),
    "peak_rss_gb": ("<=", 2.5, "peak resident memory (GB) of a fresh process running the series end to end"),
    "rethreshold_ms": ("<=", 100, "one slider move over the cached series (ms): Algorithm 1, refinement, volumes"),
    "refine_share": ("<=", 0.15, "the refinement's time / the series end to end"),
    "onnx_speedup": (">=", 1.3, "torch eager time / ONNX Runtime time, default model"),
}


def with_gpu(result: dict, gpu: dict | None) -> dict:
    """The CPU result with the GPU figures of a ``bench.gpu`` JSON filled in (that run's machine kept beside)."""
    if not gpu:
        return result
    return result | {k: gpu.get(k) for k in TARGETS if k.startswith("gpu_")} | {"gpu": gpu}


def gpu_markdown(gpu: dict) -> list[str]:
    """The GPU section of docs/BENCHMARKS.md."""
    m, d = gpu["machine"], gpu["details"]
    train = d["train"]
    lines = [
        "", "## GPU", "",
        f"From `python -m bench.gpu --json docs/bench_gpu.json --repeats 6 --compile` on {m['date']}: {m['cuda']}, "
        f"torch {m['torch']}, batch {gpu['batch']} at {gpu['input_size']} px, bf16 autocast and channels_last, "
        "untrained models of the bundled architectures, CUDA-event medians. pytorch-grad-cam runs in fp32 (it hands "
        "activations to numpy, which has no bfloat16).", "",
        "| backbone | forward img/s | ours img/s | ours / forward | pytorch-grad-cam img/s | ours / pgc | "
        "torchcam img/s | ours / torchcam |", "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in gpu["models"].items():
        lines.append(f"| {name} | {r['forward_ips']:.0f} | {r['ours_ips']:.0f} | {r['cam_over_forward']:.2f} | "
                     f"{r['pgc_ips']:.1f} | {r['cam_over_pgc']:.0f} | {r['torchcam_ips']:.0f} | "
                     f"{r['cam_over_torchcam']:.2f} |")
    lse = d["lse_over_gap"]
    lines += [
        "", f"LSE-UNet forward with heatmaps {lse['lse_ips']:.0f} img/s against the gap forward {lse['gap_ips']:.0f} "
        f"img/s on {lse['encoder']} (ratio {lse['ratio']:.2f}).",
        "", "Training step of the LSE-UNet (CLoss + HLoss, Adam), images/s: "
        + ", ".join(f"{k.removesuffix('_ips')} {v:.0f}" for k, v in train.items() if k.endswith("_ips"))
        + f" (bf16 + channels_last over fp32 eager: {train['speedup']:.2f}x"
        + (f"; compiled: {train['compiled_speedup']:.2f}x)" if "compiled_speedup" in train else ")") + ".",
    ]
    return lines


def markdown(result: dict, command: str) -> str:
    """docs/BENCHMARKS.md from a result: the figures against their targets, the machine, the command."""
    m = result["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `{command}` on {m['date']} ({'quick' if result['quick'] else 'full'} run, "
        f"input {result['input_size']} px). Machine: {m['platform']}, {m['processor']}, {m['cpu_threads']} CPU "
        f"threads, torch {m['torch']}, GPU: {m['cuda'] or 'none'}. Each figure is a ratio against a baseline measured "
        "in the same run and process (medians over repeats); null = not measured on this machine.",
        "",
        "| figure | measured | target | met | what |",
        "|---|---|---|---|---|",
    ]
    for key, (op, target, what) in TARGETS.items():
        v = result.get(key)
        met = "" if v is None else ("yes" if (v <= target if op == "<=" else v >= target) else "**no**")
        shown = "null" if v is None else f"{v:.3g}"
        lines.append(f"| `{key}` | {shown} | {op} {target} | {met} | {what} |")
    lines += ["", "Per model (CPU, one slice):", "", "| model | family | forward s | heatmaps s | ratio | pgc s |",
              "|---|---|---|---|---|---|"]
    for name, r in result["models"].items():
        pgc = f"{r['pgc_s']:.3f}" if "pgc_s" in r else "-"
        lines.append(f"| {name} | {r['family']} | {r['forward_s']:.3f} | {r['heatmaps_s']:.3f} | "
                     f"{r['cam_over_forward']:.2f} | {pgc} |")
    if result.get("gpu"):
        lines += gpu_markdown(result["gpu"])
    if result.get("browser"):
        lines += browser_markdown(result["browser"])
    return "\n".join(lines) + "\n"


def browser_markdown(b: dict) -> list[str]:
    """The browser section: what a person waits for (bench.browser), against the targets."""
    lines = [
        "",
        "## In the browser",
        "",
        f"From `python -m bench.browser --json docs/bench_browser.json` on {b['date']}: {b['machine']}; `python app.py`"
        f" with its bundled models and default selection, headless Chromium on the same machine, {b['source']} "
        "selected together in the upload box. Each figure runs from the user's action to the last picture it changed "
        f"loaded in the page: medians over {len(b['samples']['first_heatmap_s'])} new visitors uploading the series "
        f"(first heatmap, first draft, analysis) and {len(b['samples']['slice_ms'])} actions of each other kind on the "
        "last visitor's page. The series' first heatmap is that of the slice on screen, computed before the rest of "
        "the series (the same picture the whole run gives); the probability curves follow a model switch's pictures "
        "(`ui_model_switch_curves_ms`).",
        "",
        "| figure | measured | target | met |",
        "|---|---|---|---|",
    ]
    for key, target in b["targets"].items():
        unit = "s" if key.endswith("_s") else "ms"
        lines.append(f"| `{key}` | {b[key]:g} {unit} | <= {target:g} {unit} | {'yes' if b['met'][key] else '**no**'} |")
    lines.append(f"| `ui_model_switch_curves_ms` | {b['ui_model_switch_curves_ms']:g} ms | - | |")
    lines.append(f"| `ui_first_draft_s` | {b['ui_first_draft_s']:g} s | - | |")
    lines.append(f"| `ui_analysis_s` | {b['ui_analysis_s']:g} s | - | |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes and few repeats (CI)")
    p.add_argument("--json", required=True, help="where to write the figures")
    p.add_argument("--md", help="also write this markdown table (docs/BENCHMARKS.md)")
    p.add_argument("--gpu-json", help="fill the GPU figures from this bench.gpu JSON (measured on a GPU machine)")
    p.add_argument("--browser-json", help="add the browser figures of this bench.browser JSON to --md")
    args = p.parse_args(argv)
    gpu = json.loads(Path(args.gpu_json).read_text()) if args.gpu_json else None
    result = with_gpu(run(args.quick), gpu)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.md:
        command = "python -m bench.run" + (" --quick" if args.quick else "") + f" --json {args.json} --md {args.md}"
        command += f" --gpu-json {args.gpu_json}" if args.gpu_json else ""
        command += f" --browser-json {args.browser_json}" if args.browser_json else ""
        browser = json.loads(Path(args.browser_json).read_text()) if args.browser_json else None
        Path(args.md).write_text(markdown({**result, "browser": browser}, command))
    print(json.dumps({k: v for k, v in result.items() if k not in ("models", "details", "gpu")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
