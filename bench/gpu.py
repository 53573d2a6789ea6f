"""GPU speed figures (needs CUDA), each a ratio against a baseline measured in the same run and process.

    python -m bench.gpu --json docs/bench_gpu.json [--batch 32 --size 512 --repeats 10] [--compile]
    python -m bench.gpu --dry-run --json /tmp/gpu.json      # every code path on CPU, tiny sizes, no figures

Batch 32 at 512 px under bf16 autocast and channels_last, untrained models of the bundled architectures (timing
does not depend on the weights). Per gap backbone: forward-only throughput; our all-class heatmaps (``cam.heatmaps``:
one forward, gradients down to the hooked layer only); pytorch-grad-cam (fp32: it converts activations to numpy, which
has no bfloat16) and torchcam for the five classes, run the way their users run them (one call per class). The
LSE-UNet (forward = heatmaps) against the gap model on the same encoder. Training-step throughput of the default
LSE-UNet: fp32 eager against bf16 + channels_last (and with ``torch.compile`` when asked). Times come from CUDA
events, medians over repeats after warm-up calls.

Figures: gpu_cam_over_forward (min over backbones; target >= 0.85), gpu_cam_over_pgc (min; target >= 50),
gpu_lse_over_gap (target >= 0.6), gpu_train_speedup (bf16 + channels_last over fp32 eager).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from bench.run import _LogitsOnly, machine, median_time
from ichdemo.cam import heatmaps
from ichdemo.models import create_model
from ichdemo.models.losses import LseUnetLoss

GAP_BACKBONES = ("tf_efficientnet_lite0", "mobilenetv2_100")


def cuda_time(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median seconds of ``fn`` measured with CUDA events (synchronised), after ``warmup`` calls; wall time on
    CPU (``--dry-run``)."""
    if not torch.cuda.is_available():
        return median_time(fn, repeats, warmup)
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return statistics.median(times)


def _prepare(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    return model.to(device).eval().to(memory_format=torch.channels_last)


def per_backbone(backbone: str, x: torch.Tensor, repeats: int) -> dict:
    """Throughputs (images/s) of forward, ours, pytorch-grad-cam and torchcam on one gap model."""
    from pytorch_grad_cam import GradCAM as PGC
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from torchcam.methods import GradCAM as TorchCAM

    model = _prepare(create_model(f"gap_{backbone}", pretrained=False), x.device)
    b = x.shape[0]
    row: dict = {}
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        with torch.inference_mode():
            row["forward_ips"] = b / cuda_time(lambda: model(x), repeats)
        row["ours_ips"] = b / cuda_time(lambda: heatmaps(model, x), repeats)
    print(backbone, "forward", row["forward_ips"], "ours", row["ours_ips"], flush=True)

    # pytorch-grad-cam hands activations to numpy, which has no bfloat16: it runs in fp32, as its users must.
    wrapped = _LogitsOnly(model)
    with PGC(model=wrapped, target_layers=[model.cam_layer]) as pgc:
        def run_pgc() -> None:
            for c in range(5):
                pgc(input_tensor=x, targets=[ClassifierOutputTarget(c)] * b)
        row["pgc_ips"] = b / cuda_time(run_pgc, max(2, repeats // 4), warmup=1)

    extractor = TorchCAM(wrapped, target_layer=model.cam_layer)
    try:
        def run_torchcam() -> None:
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                scores = wrapped(x)
            for c in range(5):
                extractor(c, scores, retain_graph=c < 4)
        row["torchcam_ips"] = b / cuda_time(run_torchcam, max(2, repeats // 4), warmup=1)
    finally:
        extractor.remove_hooks()
    row["cam_over_forward"] = row["ours_ips"] / row["forward_ips"]
    row["cam_over_pgc"] = row["ours_ips"] / row["pgc_ips"]
    row["cam_over_torchcam"] = row["ours_ips"] / row["torchcam_ips"]
    return row


def lse_over_gap(x: torch.Tensor, repeats: int, encoder: str = "tf_efficientnet_lite0") -> dict:
    """LSE-UNet forward with heatmaps against the gap forward, same encoder, bf16."""
    gap = _prepare(create_model(f"gap_{encoder}", pretrained=False), x.device)
    lse = _prepare(create_model(f"lse_unet_{encoder}", pretrained=False), x.device)
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        with torch.inference_mode():
            t_gap = cuda_time(lambda: gap(x), repeats)
        t_lse = cuda_time(lambda: heatmaps(lse, x), repeats)
    return {"encoder": encoder, "gap_ips": x.shape[0] / t_gap, "lse_ips": x.shape[0] / t_lse, "ratio": t_gap / t_lse}


def train_steps(x: torch.Tensor, repeats: int, compile_: bool, encoder: str = "tf_efficientnet_lite0") -> dict:
    """Training-step throughput (CLoss + HLoss, Adam) of the LSE-UNet: fp32 eager, bf16 + channels_last, compiled."""
    y = (torch.rand(x.shape[0], 5, device=x.device) < 0.2).float()
    loss_fn = LseUnetLoss()
    out: dict = {}
    variants = [("fp32_eager", False, False), ("bf16_channels_last", True, False)]
    if compile_:
        variants.append(("bf16_channels_last_compiled", True, True))
    for name, fast, comp in variants:
        model = create_model(f"lse_unet_{encoder}", pretrained=False).to(x.device).train()
        xin = x.float()
        if fast:
            model, xin = model.to(memory_format=torch.channels_last), xin.contiguous(memory_format=torch.channels_last)
        step_model = torch.compile(model) if comp else model
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)

        def step() -> None:
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=fast):
                loss = loss_fn(step_model(xin), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        out[f"{name}_ips"] = x.shape[0] / cuda_time(step, repeats, warmup=3)
        print(name, out[f"{name}_ips"], flush=True)
    out["speedup"] = out["bf16_channels_last_ips"] / out["fp32_eager_ips"]
    if compile_:
        out["compiled_speedup"] = out["bf16_channels_last_compiled_ips"] / out["fp32_eager_ips"]
    return out


def run(batch: int, size: int, repeats: int, compile_: bool, device: str = "cuda") -> dict:
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    models = {}
    for b in GAP_BACKBONES:
        models[b] = per_backbone(b, x, repeats)
        print(b, json.dumps(models[b]), flush=True)
    lse = lse_over_gap(x, repeats)
    print("lse_over_gap", json.dumps(lse), flush=True)
    train = train_steps(x, repeats, compile_)
    return {
        "batch": batch,
        "input_size": size,
        "machine": machine(),
        "models": models,
        "gpu_cam_over_forward": min(r["cam_over_forward"] for r in models.values()),
        "gpu_cam_over_pgc": min(r["cam_over_pgc"] for r in models.values()),
        "gpu_lse_over_gap": lse["ratio"],
        "gpu_train_speedup": train["speedup"],
        "details": {"lse_over_gap": lse, "train": train},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", required=True, help="where to write the figures")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--compile", action="store_true", help="also time a torch.compile'd training step")
    p.add_argument("--dry-run", action="store_true", help="run every code path on CPU at batch 2, 64 px (no figures)")
    args = p.parse_args(argv)
    if args.dry_run:
        result = run(2, 64, 1, args.compile, device="cpu")
    elif not torch.cuda.is_available():
        print("bench.gpu needs a CUDA GPU (or --dry-run)", file=sys.stderr)
        return 2
    else:
        result = run(args.batch, args.size, args.repeats, args.compile)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "models"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
