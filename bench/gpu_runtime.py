"""CUDA provider numbers for the default model's artifacts (original and compressed): decode
tokens/s, time to first token and device memory from NVML per context length, each context
in a fresh process. Run by bench/gpu_runtime.sh on a GPU machine (needs onnxruntime-gpu and
nvidia-ml-py); writes bench/results/gpu_runtime.json and gpu_runtime.md."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def gpu_name() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=str(Path(__file__).parent / "_work"))
    ap.add_argument("--contexts", default="512,2048,8192")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    a = ap.parse_args()
    import onnxruntime as ort

    from edgedelta.devices.tables import fmt_bytes, table
    from edgedelta.fsutil import write_json_atomic
    from edgedelta.runtime.profiler import measure_isolated, parse_contexts
    from runtime_artifacts import ensure_artifacts

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    orig, comp, notes = ensure_artifacts(Path(a.work), log=lambda m: print(m, file=sys.stderr))
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "gpu": gpu_name(), "onnxruntime": ort.__version__,
           "providers": ort.get_available_providers(), "platform": platform.platform(), "notes": notes, "runs": []}
    for art in [orig] + ([comp] if comp else []):
        for c in parse_contexts(a.contexts):
            try:
                r = measure_isolated(art, c, a.new_tokens, "cuda", None, timeout=300)
            except Exception as e:  # keep what was measured; record the failure
                r = {"context": c, "error": str(e)}
            r["model"] = art.name
            res["runs"].append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
            write_json_atomic(out / "gpu_runtime.json", res)
    rows = [[r["model"], r["context"], f"{r['ttft_s'] * 1000:.1f}", f"{r['decode_tok_s']:.1f}",
             fmt_bytes(r.get("gpu_mem_start_bytes")), fmt_bytes(r.get("gpu_peak_load_bytes")),
             fmt_bytes(r.get("gpu_peak_generate_bytes")), fmt_bytes(r["peak_rss_bytes"])] if "error" not in r
            else [r["model"], r["context"], "error: " + r["error"][:80], "", "", "", "", ""] for r in res["runs"]]
    md = [f"# CUDA runtime ({res['gpu']}, onnxruntime {res['onnxruntime']})", "", res["date"], "",
          table(["model", "context", "TTFT ms", "decode tok/s", "GPU mem before", "GPU peak after load", "GPU peak generate",
                 "host peak RSS"], rows, markdown=True), "",
          "Each context in a fresh process: prompt of (context - new tokens) random tokens, greedy decode of "
          f"{a.new_tokens} tokens with the KV cache in device buffers (IO binding). GPU memory is the device total "
          "in use (NVML), so it includes the CUDA context and ORT's arena.", ""]
    (out / "gpu_runtime.md").write_text("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
