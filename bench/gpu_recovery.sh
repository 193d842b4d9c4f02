#!/usr/bin/env bash
# Paper-scale recovery on one CUDA GPU (one prepared run of < 10 minutes).
#
#   bash bench/gpu_recovery.sh     # results in bench/results/gpu_recovery_{12,25}.{json,md} and _loss.png
#   DEADLINE12=600 DEADLINE25=400 TOKENS=40000000 bash bench/gpu_recovery.sh   # a longer lease
#   MODEL=qwen2.5-coder-1.5b TARGETS=12 DEADLINE12=480 GRAD_ACCUM=4 EVAL_TOKENS=8192 bash bench/gpu_recovery.sh
#                                  # -> bench/results/gpu_recovery_qwen2.5-coder-1.5b_12.*
#   DEVICE=cpu BATCH=2 SEQ=64 ... bash bench/gpu_recovery.sh                    # dry run of the script on a CPU
#                                  # (tests/bench/test_gpu_recovery.py runs it so on a tiny random model)
# MODEL is what --model takes: a built-in name, a GGUF file or a Hugging Face directory. At 1.5B
# (vocabulary 151,936) one 512-token sequence's logits are 0.3 GB in fp32, student and teacher
# each: GRAD_ACCUM splits the batch of BATCH sequences into that many micro-batches (the same
# optimizer steps), and the throughput probe doubles it by itself while a step runs out of GPU
# memory. The evaluation keeps the teacher's logits on the GPU in fp16: 2 texts x EVAL_TOKENS x
# vocabulary x 2 bytes (10 GB at 16,384 tokens and 1.5B; 8,192 halves it).
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
export EDGEDELTA_CACHE="${EDGEDELTA_CACHE:-$PWD/bench/_work/cache}"   # a GGUF model dequantised here once
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
DEVICE="${DEVICE:-cuda}"
MODEL="${MODEL:-default}"
TARGETS="${TARGETS:-12,25}"          # which runs: 12 (keep 88%: arms a, c, e, f) and/or 25 (keep 75%: arms a, c)
GRAD_ACCUM="${GRAD_ACCUM:-1}"
LR="${LR:-3e-4}"                     # distillation of the shared model (arms a, e)
HEAL_LR="${HEAL_LR:-1e-3}"           # LoRA healing of ShortGPT removal (arm c) and of arm f
TOKENS="${TOKENS:-20000000}"         # at most this many training tokens per arm
BATCH="${BATCH:-32}"                 # sequences per step
SEQ="${SEQ:-512}"
EVAL_TOKENS="${EVAL_TOKENS:-16384}"  # per evaluation text
RECON_TOKENS="${RECON_TOKENS:-262144}"
DEADLINE12="${DEADLINE12:-290}"      # seconds for the 12% run (arms a, c, e, f)
DEADLINE25="${DEADLINE25:-190}"      # seconds for the 25% run (arms a and c)
RES="${RES:-bench/results}"
WORK="${WORK:-bench/_work}"          # the compressed inits (reused between CPU runs)
# result names: gpu_recovery_12 for the default model, gpu_recovery_<model>_12 for another
STEM="${STEM:-gpu_recovery$([ "$MODEL" = default ] || basename "$MODEL" | tr -c 'A-Za-z0-9.\n-' _ | sed 's/^/_/')}"
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

common=(--model "$MODEL" --device "$DEVICE" --batch "$BATCH" --grad-accum "$GRAD_ACCUM" --seq-len "$SEQ" --tokens "$TOKENS"
        --eval-at "$((TOKENS / 10)),$((TOKENS / 2)),$TOKENS" --eval-tokens "$EVAL_TOKENS"
        --recon-tokens "$RECON_TOKENS" --recon-epochs 4 --recon-variants teacher --lr "$LR" --heal-lr "$HEAL_LR"
        --work "$WORK" --out "$RES" ${EXTRA:-})

run() {  # tag, deadline, args...: progress bars dropped from the log, the rest kept
  local tag=$1 deadline=$2; shift 2
  timeout "$((deadline + 60))" python3 bench/recovery.py "${common[@]}" --deadline "$deadline" --tag "$tag" "$@" 2>&1 \
    | tr '\r' '\n' | grep --line-buffered -v -E '^\s*$|it/s\]$|tok/s\]$|tok/s, loss|calibration:|reconstruct'
  echo "$tag exit: ${PIPESTATUS[0]}"
}
case ",$TARGETS," in *,12,*) run "${STEM}_12" "$DEADLINE12" --target 0.88 --arms a,c,e,f ;; esac
case ",$TARGETS," in *,25,*) run "${STEM}_25" "$DEADLINE25" --target 0.75 --arms a,c ;; esac

for t in "${STEM}_12" "${STEM}_25"; do  # reports from whatever was measured
  [ -f "$RES/$t.json" ] && python3 bench/recovery.py --report-only --out "$RES" --tag "$t"
done
if [ -n "${OUT:-}" ]; then cp "$RES/${STEM}"_* "$OUT"/ 2>/dev/null || true; fi
ls -la "$RES/${STEM}"_* 2>/dev/null
