#!/usr/bin/env bash
# Paper-scale recovery on one CUDA GPU (one prepared run of < 10 minutes).
#
#   bash bench/gpu_recovery.sh     # results in bench/results/gpu_recovery_{12,25}.{json,md} and _loss.png
#   DEADLINE12=600 DEADLINE25=400 TOKENS=40000000 bash bench/gpu_recovery.sh   # a longer lease
#   DEVICE=cpu BATCH=2 SEQ=64 ... bash bench/gpu_recovery.sh                    # dry run of the script on a CPU
# On a GPU host without a package registry, bench/gpu_payload.sh carries the inputs there
# (pack here; stash each part there; then `source bench/gpu_payload.sh env` before this).
#
# Same arms as bench/recovery.py (best init + progressive replacement, ShortGPT removal healed
# with LoRA, and at 12% the drop-plus-share hybrid e and f = e + LoRA on its unshared layers), at 12% and 25%
# parameter reduction, bf16 autocast, batch 32 x 512 tokens. Each target is time-boxed
# (--deadline): a few probe steps of every arm measure its tokens/s, which sets the same token
# count for all arms (at most TOKENS), so the comparison stays at equal tokens whatever the GPU.
# Every evaluation point is written as soon as it is measured, and a hard `timeout` backs the
# deadline, so a slow stage still leaves numbers. Copies the results into $OUT when that is
# set (device runner).
set -u
cd "$(dirname "$0")/.."
export EDGEDELTA_CACHE="${EDGEDELTA_CACHE:-$PWD/bench/_work/cache}"   # default model dequantised here once
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
DEVICE="${DEVICE:-cuda}"
TOKENS="${TOKENS:-20000000}"         # at most this many training tokens per arm
BATCH="${BATCH:-32}"                 # sequences per step
SEQ="${SEQ:-512}"
EVAL_TOKENS="${EVAL_TOKENS:-16384}"  # per evaluation text
RECON_TOKENS="${RECON_TOKENS:-262144}"
DEADLINE12="${DEADLINE12:-290}"      # seconds for the 12% run (arms a, c, e, f)
DEADLINE25="${DEADLINE25:-190}"      # seconds for the 25% run (arms a and c)
RES="${RES:-bench/results}"
mkdir -p "$RES"

if [ "$DEVICE" = cuda ]; then
  python3 - <<'EOF' || { echo "gpu_recovery: no usable CUDA torch here"; exit 3; }
import torch, transformers
assert torch.cuda.is_available(), "CUDA not available"
print("torch", torch.__version__, "transformers", transformers.__version__, "gpu", torch.cuda.get_device_name(0),
      "bf16", torch.cuda.is_bf16_supported())
EOF
  nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv || true
fi

common=(--device "$DEVICE" --batch "$BATCH" --seq-len "$SEQ" --tokens "$TOKENS"
        --eval-at "$((TOKENS / 10)),$((TOKENS / 2)),$TOKENS" --eval-tokens "$EVAL_TOKENS"
        --recon-tokens "$RECON_TOKENS" --recon-epochs 4 --recon-variants teacher --lr 3e-4 --heal-lr 1e-3
        --work bench/_work --out "$RES" ${EXTRA:-})

run() {  # tag, deadline, args...: progress bars dropped from the log, the rest kept
  local tag=$1 deadline=$2; shift 2
  timeout "$((deadline + 60))" python3 bench/recovery.py "${common[@]}" --deadline "$deadline" --tag "$tag" "$@" 2>&1 \
    | tr '\r' '\n' | grep --line-buffered -v -E '^\s*$|it/s\]$|tok/s\]$|tok/s, loss|calibration:|reconstruct'
  echo "$tag exit: ${PIPESTATUS[0]}"
}
run gpu_recovery_12 "$DEADLINE12" --target 0.88 --arms a,c,e,f
run gpu_recovery_25 "$DEADLINE25" --target 0.75 --arms a,c

for t in gpu_recovery_12 gpu_recovery_25; do  # reports from whatever was measured
  [ -f "$RES/$t.json" ] && python3 bench/recovery.py --report-only --out "$RES" --tag "$t"
done
if [ -n "${OUT:-}" ]; then cp "$RES"/gpu_recovery_* "$OUT"/ 2>/dev/null || true; fi
ls -la "$RES"/gpu_recovery_* 2>/dev/null
