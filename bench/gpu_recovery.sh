#!/usr/bin/env bash
# Paper-scale recovery on one CUDA GPU (written for one prepared run of < 10 minutes).
#
#   bash bench/gpu_recovery.sh            # results in bench/results/gpu_recovery_{12,25}.{json,md,_loss.png}
#   TOKENS=2000000 bash bench/gpu_recovery.sh   # fewer tokens per arm
#
# Same arms as bench/recovery.py (best init + progressive replacement, plain distillation,
# ShortGPT removal healed with LoRA), at 12% and 25% parameter reduction, bf16 autocast,
# larger batches. Each target runs under its own time limit so one slow stage cannot eat the
# other's budget; every evaluation point is written as soon as it is measured, so a timeout
# still leaves numbers. Copies the results into $OUT when that is set (device runner).
set -u
cd "$(dirname "$0")/.."
export EDGEDELTA_CACHE="${EDGEDELTA_CACHE:-$PWD/bench/_work/cache}"   # default model dequantised here once
export TOKENIZERS_PARALLELISM=false
TOKENS="${TOKENS:-5000000}"          # training tokens per arm
BATCH="${BATCH:-32}"                 # sequences per step
SEQ="${SEQ:-512}"
LIMIT12="${LIMIT12:-330}"            # seconds for the 12% run
LIMIT25="${LIMIT25:-210}"            # seconds for the 25% run (arms a and c only)
RES=bench/results
mkdir -p "$RES"

python - <<'EOF' || { echo "gpu_recovery: no usable CUDA torch here"; exit 3; }
import torch, transformers
assert torch.cuda.is_available(), "CUDA not available"
print("torch", torch.__version__, "transformers", transformers.__version__, "gpu", torch.cuda.get_device_name(0),
      "bf16", torch.cuda.is_bf16_supported())
EOF
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv || true

common=(--device cuda --batch "$BATCH" --seq-len "$SEQ" --tokens "$TOKENS"
        --eval-at "$((TOKENS / 10)),$((TOKENS / 2)),$TOKENS" --eval-tokens 16384
        --recon-tokens 262144 --recon-epochs 4 --lr 3e-4 --heal-lr 1e-3 --work bench/_work)

timeout "$LIMIT12" python bench/recovery.py "${common[@]}" --target 0.88 --arms a,c,b --tag gpu_recovery_12 \
  2>&1 | tr '\r' '\n' | grep -v -E '^\s*$|it/s\]$' | tail -n 60
echo "12% run exit: ${PIPESTATUS[0]}"
timeout "$LIMIT25" python bench/recovery.py "${common[@]}" --target 0.75 --arms a,c --recon-variants student --tag gpu_recovery_25 \
  2>&1 | tr '\r' '\n' | grep -v -E '^\s*$|it/s\]$' | tail -n 60
echo "25% run exit: ${PIPESTATUS[0]}"

for t in gpu_recovery_12 gpu_recovery_25; do  # reports from whatever was measured
  [ -f "$RES/$t.json" ] && python bench/recovery.py --report-only --out "$RES" --tag "$t"
done
if [ -n "${OUT:-}" ]; then cp "$RES"/gpu_recovery_* "$OUT"/ 2>/dev/null || true; fi
ls -la "$RES"/gpu_recovery_* 2>/dev/null
