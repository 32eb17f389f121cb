#!/usr/bin/env bash
# The accelerator check in one command: the Sync train step at base size in bfloat16 with
# cuDNN attention (the MFU target), beside the same step with XLA attention and in float32, all
# on the same card in one run so that they compare. For the project's device tool:
#
#   bash benchmarks/gpu_check.sh            # writes $OUT/*.json and $OUT/gpu_check.log
#
# It needs only what model_step.py imports (jax, flax, optax, numpy, pillow), which the device
# image has; nothing is installed. SIZE, BATCH, STEPS and PYTHON override the defaults (e.g.
# SIZE=tiny BATCH=2 STEPS=1 to try the script on a CPU).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results/gpu}
size=${SIZE:-base}
batch=${BATCH:-64}
steps=${STEPS:-10}
py=${PYTHON:-python3}
mkdir -p "$out"
log="$out/gpu_check.log"
export PYTHONUNBUFFERED=1

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null ||
    echo "(no nvidia-smi)"
  "$py" -c "import jax; print('jax', jax.__version__, jax.devices())"
} 2>&1 | tee "$log"

status=0
run() {  # name, then model_step.py flags
  local name=$1
  shift
  echo "== $name: $*" | tee -a "$log"
  "$py" benchmarks/model_step.py --arch sync --size "$size" --batch "$batch" --steps "$steps" \
      --warmup 2 "$@" --json "$out/$name.json" 2>&1 | tail -n 22 | tee -a "$log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
}
run "sync_${size}_bf16_fused_b${batch}" --dtype bfloat16 --attention_impl fused
run "sync_${size}_bf16_xla_b${batch}" --dtype bfloat16 --attention_impl xla
run "sync_${size}_f32_fused_b${batch}" --dtype float32 --attention_impl fused
exit $status
