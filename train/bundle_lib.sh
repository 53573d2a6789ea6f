# Sourced by train/bundle.sh and train/bundle_gpu.sh (needs PY and DATA):
#   bundle RUN NAME [ARGS...]   calibrate RUN on $DATA, evaluate it (eval.json/.md/.html in RUN), then, unless NAME is
#                               "", copy it into checkpoints/NAME and write its model card; ARGS go to calibrate and
#                               evaluate both (e.g. --split saved); $CALIBRATE_ARGS to calibrate only.
bundle() {
  local run=$1 name=$2
  shift 2
  $PY -m train.calibrate --model "$run" --data "$DATA" ${CALIBRATE_ARGS:-} "$@"
  $PY -m train.evaluate --model "$run" --data "$DATA" "$@" --json "$run/eval.json" --md "$run/eval.md" --html "$run/eval.html"
  [ -n "$name" ] || return 0
  rm -rf "checkpoints/$name" && mkdir -p "checkpoints/$name"
  cp "$run/config.json" "$run"/model*.safetensors "$run/eval.json" "checkpoints/$name/"
  $PY -m train.model_card --model "checkpoints/$name" --eval "$run/eval.json" --name "$name"
}
