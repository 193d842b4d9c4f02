"""CUDA provider numbers for the default model's artifacts (original and compressed). Run by
bench/gpu_runtime.sh on a GPU machine (needs onnxruntime-gpu and nvidia-ml-py); writes
bench/results/gpu_runtime.json and gpu_runtime.md. Per artifact:
  - placement: one CUDA session profiled (ORT's profiler) over a 16-token prefill and 8 decode
    steps through the runtime's IO binding path: kernels per execution provider, the op
    types left on the CPU, and each provider's share of kernel time
  - parity with the CPU provider: max |logit difference| after the prefill, and the greedy
    tokens of 16 decode steps on both; with ORT's default TF32 matmuls and with them off
  - TF32 on vs off: time to first token of a 2k-token prefill, alternating in one process
  - per context length, each in a fresh process: time to first token, decode tokens/s, device
    memory from NVML and host peak RSS (edgedelta.runtime.profiler.measure_isolated)
Then compressed/original decode speed with both sessions in one process, their decode steps
interleaved (bench/runtime.py paired_decode), on CUDA and on the GPU machine's own CPU at
each of --cpu-threads (edge-class core counts, on a CPU no neighbour shares).

  python bench/gpu_runtime.py [--contexts 512,2048,8192] [--new-tokens 128] [--cpu-threads 1,2,4]
                              [--plan-from bench/results/runtime.json | none] [--provider cuda|cpu]
                              [--original-only] [--dtype fp16|fp32]"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # last: only an installed edgedelta has export, runtime, devices
sys.path.insert(0, str(Path(__file__).resolve().parent))

CPU_EP = "CPUExecutionProvider"


def gpu_name() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def _steps(session, ids, decode_steps: int) -> tuple[object, list[int]]:
    """Prefill `ids` (list of token ids), then `decode_steps` greedy steps; (prefill logits [V], tokens)."""
    import numpy as np

    x = np.array([ids], np.int64)
    cache = session.new_cache(1, len(ids) + decode_steps + 1)
    logits = session.forward(x, np.ones_like(x), np.arange(len(ids))[None], cache)
    first = logits[0].copy()
    tokens = [int(first.argmax())]
    for _ in range(decode_steps):
        pos = cache.length
        logits = session.forward(np.array([[tokens[-1]]]), np.ones((1, pos + 1), np.int64), np.array([[pos]]), cache)
        tokens.append(int(logits[0].argmax()))
    return first, tokens


def placement(art: Path, ids: list[int], provider: str = "cuda") -> dict:
    """Which execution provider ran each node: ORT's profile of one CUDA session over a prefill
    and 8 decode steps, run through edgedelta's Session (IO binding into CUDA KV buffers).
    provider='cpu' runs the same on the CPU alone (a dry run of this script without a GPU)."""
    import json

    import onnxruntime as ort

    from edgedelta.runtime import Session
    from edgedelta.runtime.artifact import Artifact
    from edgedelta.runtime.session import artifact_session_options, cuda_provider

    a = Artifact.open(art, verify=False)
    with tempfile.TemporaryDirectory() as tmp:
        so = artifact_session_options(a)
        so.enable_profiling = True  # what Session.from_dir cannot turn on
        so.profile_file_prefix = str(Path(tmp) / "ort")
        providers = [cuda_provider(), CPU_EP] if provider == "cuda" else [CPU_EP]
        sess = ort.InferenceSession(str(a.model_file), sess_options=so, providers=providers)
        _steps(Session(a, sess, provider, None, 0.0), ids[:16], 8)
        events = json.loads(Path(sess.end_profiling()).read_text())
    kernels = [e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")]
    nodes: dict[str, set] = {}
    time_us: Counter = Counter()
    cpu_ops: Counter = Counter()
    for e in kernels:
        prov = e.get("args", {}).get("provider", "?")
        name = e["name"][: -len("_kernel_time")]
        if name not in nodes.setdefault(prov, set()) and prov == CPU_EP:
            cpu_ops[e["args"].get("op_name", "?")] += 1
        nodes[prov].add(name)
        time_us[prov] += int(e.get("dur", 0))
    total = sum(time_us.values()) or 1
    return {"nodes": {p: len(n) for p, n in nodes.items()}, "cpu_op_types": dict(cpu_ops.most_common()),
            "kernel_time_share": {p: round(t / total, 4) for p, t in time_us.items()}}


def parity(art: Path, ids: list[int], steps: int = 16, provider: str = "cuda") -> dict:
    """`provider` (CUDA) against the CPU provider on one prompt: prefill logits and greedy
    tokens, with ORT's default TF32 matmuls on CUDA and with them off (`use_tf32` 0)."""
    import numpy as np

    from edgedelta.runtime import Session

    cpu_logits, cpu_tokens = _steps(Session.from_dir(art, provider="cpu", tokenizer=None), ids, steps)
    res = {}
    for key, tf32 in (("", True), ("_tf32_off", False)):
        logits, tokens = _steps(Session.from_dir(art, provider=provider, tokenizer=None, cuda_tf32=tf32), ids, steps)
        same = sum(a == b for a, b in zip(cpu_tokens, tokens))
        res["max_abs_logit_diff" + key] = float(np.abs(cpu_logits - logits).max())
        res["greedy_tokens_equal" + key] = f"{same}/{len(cpu_tokens)}"
    return res


def tf32_prefill(art: Path, context: int = 2048, rounds: int = 3, provider: str = "cuda") -> dict:
    """Time to first token of a `context`-token prefill (random ids) with TF32 on and off: two
    sessions in one process, alternating, after one warm-up prefill each; medians in ms."""
    import numpy as np

    from edgedelta.runtime import Session

    rng = np.random.default_rng(0)
    sessions = {k: Session.from_dir(art, provider=provider, tokenizer=None, cuda_tf32=tf32) for k, tf32 in (("on", True), ("off", False))}
    x = rng.integers(0, sessions["on"].artifact.vocab_size, (1, context))
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for r in range(rounds + 1):
        for k, s in sessions.items():
            cache = s.new_cache(1, context + 1)
            t = time.perf_counter()
            s.forward(x, np.ones_like(x), np.arange(context)[None], cache)
            if r:  # round 0 warms up
                times[k].append((time.perf_counter() - t) * 1000)
    return {"context": context, **{f"ttft_ms_{k}": float(np.median(v)) for k, v in times.items()}}


def paired(orig: Path, comp: Path, provider: str, threads: int | None) -> dict:
    from runtime import OursEngine, paired_decode  # bench/runtime.py

    kw = {"threads": threads} if threads else {}
    a, b = OursEngine(orig, provider=provider, **kw), OursEngine(comp, provider=provider, **kw)
    r = paired_decode(a, b)
    r.pop("block_pair_ratios")
    return {"provider": provider, "threads": threads, **r}


def attempt(fn, *args) -> dict:
    """Run one stage; its failure is recorded, the next stages still run (a GPU lease is short)."""
    try:
        return fn(*args)
    except Exception as e:
        traceback.print_exc()
        return {"error": f"{type(e).__name__}: {e}"[:300]}


def report(res: dict, new_tokens: int, notes: Path | None = None) -> str:
    """gpu_runtime.md from the results; `notes` (markdown written by a person reading them) is
    appended when it exists, so a rerun keeps the analysis."""
    from edgedelta.devices.tables import fmt_bytes, table

    runs = [[r["model"], r["context"], f"{r['ttft_s'] * 1000:.1f}", f"{r['decode_tok_s']:.1f}",
             fmt_bytes(r.get("gpu_mem_start_bytes")), fmt_bytes(r.get("gpu_peak_load_bytes")),
             fmt_bytes(r.get("gpu_peak_generate_bytes")), fmt_bytes(r["peak_rss_bytes"])] if "error" not in r
            else [r["model"], r["context"], "error: " + r["error"][:80], "", "", "", "", ""] for r in res["runs"]]
    checks = []
    for name, c in res["checks"].items():
        p, q = c.get("placement", {}), c.get("parity", {})
        checks.append([name, p.get("error") or ", ".join(f"{k.replace('ExecutionProvider', '')} {v}" for k, v in p.get("nodes", {}).items()),
                       ", ".join(f"{k} {v}" for k, v in p.get("cpu_op_types", {}).items()) or ("-" if "nodes" in p else ""),
                       f"{p.get('kernel_time_share', {}).get(CPU_EP, 0.0):.1%}" if "nodes" in p else "",
                       q.get("error") or f"{q['max_abs_logit_diff']:.2e}", q.get("greedy_tokens_equal", ""),
                       f"{q['max_abs_logit_diff_tf32_off']:.2e}" if "max_abs_logit_diff_tf32_off" in q else "",
                       q.get("greedy_tokens_equal_tf32_off", "")])
    pairs = [[p.get("provider", "?"), p.get("threads") or "default",
              p.get("error") or f"{p['ratio']:.3f}",
              "" if "error" in p else f"{p['ms_per_token']['a']:.2f} / {p['ms_per_token']['b']:.2f}"] for p in res["paired"]]
    md = [f"# CUDA runtime ({res['gpu']}, onnxruntime {res['onnxruntime']})", "", res["date"], "",
          "## Speed and memory per context", "",
          table(["model", "context", "TTFT ms", "decode tok/s", "GPU mem before", "GPU peak after load", "GPU peak generate",
                 "host peak RSS"], rows=runs, markdown=True), "",
          "Each context in a fresh process: prompt of (context - new tokens) random tokens, greedy decode of "
          f"{new_tokens} tokens with the KV cache in device buffers (IO binding). GPU memory is the device total "
          "in use (NVML), so it includes the CUDA context and ORT's arena.", "",
          "## Where the nodes ran, and agreement with the CPU provider", "",
          table(["model", "nodes per provider", "op types on CPU", "CPU share of kernel time", "max abs logit diff vs CPU",
                 "greedy tokens equal", "TF32 off: max abs logit diff", "TF32 off: tokens equal"], rows=checks, markdown=True), "",
          "Nodes: ORT's profile of a 16-token prefill and 8 decode steps through edgedelta's Session. "
          "ORT places shape arithmetic on the CPU on purpose; any other op there is a kernel the CUDA provider lacks. "
          "Parity: prefill logits of one prompt and 16 greedy steps against the CPU provider, with ORT's default TF32 "
          "matmuls on CUDA and with `use_tf32` 0.", "",
          *tf32_section(res),
          "## Compressed / original decode speed, interleaved in one process", "",
          table(["provider", "threads", "compressed/original tok/s", "ms per token original / compressed"], rows=pairs,
                markdown=True), "",
          "bench/runtime.py's paired_decode: the two sessions alternate every 16 greedy decode steps, 24 blocks each; "
          "the ratio is of median step times.", ""]
    if notes is not None and notes.is_file():
        md += [notes.read_text()]
    return "\n".join(md)


def tf32_section(res: dict) -> list[str]:
    """The TF32 on/off prefill table (results without it: nothing)."""
    from edgedelta.devices.tables import table

    rows = [[name, t.get("error") or t["context"], "" if "error" in t else f"{t['ttft_ms_on']:.1f}",
             "" if "error" in t else f"{t['ttft_ms_off']:.1f}"]
            for name, c in res["checks"].items() if (t := c.get("tf32_prefill"))]
    if not rows:
        return []
    return ["TF32 and prefill time (two sessions in one process, alternating, 3 rounds after a warm-up, median):", "",
            table(["model", "prompt tokens", "TTFT ms, TF32 on", "TTFT ms, TF32 off"], rows=rows, markdown=True), ""]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=str(Path(__file__).parent / "_work"))
    ap.add_argument("--contexts", default="512,2048,8192")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--tf32-context", type=int, default=2048, help="prompt tokens of the TF32 on/off prefill timing")
    ap.add_argument("--cpu-threads", default="0", help="thread counts of CPU paired runs, e.g. 1,2,4 (default 0: none; "
                    "the CPU's own figures come from fp32 artifacts, bench/runtime.py)")
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "fp32"],
                    help="export dtype: fp16, as ONNX Runtime's CUDA GroupQueryAttention needs (fp32 runs it on the CPU)")
    ap.add_argument("--plan-from", default=str(Path(__file__).parent / "results" / "runtime.json"),
                    help="results JSON whose compressed artifact's groups and ranks to reuse ('none': run the planner)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--original-only", action="store_true", help="benchmark the original artifact alone (no compression)")
    ap.add_argument("--md-only", action="store_true", help="rewrite gpu_runtime.md from gpu_runtime.json (and the notes)")
    ap.add_argument("--provider", default="cuda", choices=["cuda", "cpu"], help="cpu: a dry run of this script without a GPU")
    a = ap.parse_args()
    import onnxruntime as ort

    from edgedelta.fsutil import write_json_atomic, write_text_atomic
    from edgedelta.runtime.profiler import measure_isolated, parse_contexts
    from runtime import PROMPT  # bench/runtime.py
    from runtime_artifacts import ensure_artifacts, recorded_plan

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    notes_md = out / "gpu_runtime.notes.md"
    if a.md_only:
        import json

        res = json.loads((out / "gpu_runtime.json").read_text())
        write_text_atomic(out / "gpu_runtime.md", report(res, res.get("new_tokens", a.new_tokens), notes_md))
        return 0
    plan = None if a.plan_from == "none" else recorded_plan(Path(a.plan_from), log=lambda m: print(m, file=sys.stderr))
    t = time.perf_counter()
    orig, comp, notes = ensure_artifacts(Path(a.work), log=lambda m: print(m, file=sys.stderr), plan=plan,
                                         original_only=a.original_only, dtype=a.dtype)
    if a.original_only:
        notes["compressed"] = "not built (--original-only)"
    notes["artifacts_s"] = round(time.perf_counter() - t, 1)
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "gpu": gpu_name(), "onnxruntime": ort.__version__,
           "providers": ort.get_available_providers(), "platform": platform.platform(), "notes": notes, "new_tokens": a.new_tokens,
           "checks": {}, "runs": [], "paired": []}
    arts = [orig] + ([comp] if comp else [])

    def save():
        write_json_atomic(out / "gpu_runtime.json", res)
        write_text_atomic(out / "gpu_runtime.md", report(res, a.new_tokens, notes_md))

    from edgedelta.runtime.tokenizer import LightTokenizer

    ids = LightTokenizer(orig)(PROMPT)["input_ids"]
    for art in arts:
        res["checks"][art.name] = {"placement": attempt(placement, art, ids, a.provider),
                                   "parity": attempt(parity, art, ids, 16, a.provider),
                                   "tf32_prefill": attempt(tf32_prefill, art, a.tf32_context, 3, a.provider)}
        print(art.name, res["checks"][art.name], file=sys.stderr, flush=True)
        save()
    for art in arts:
        for c in parse_contexts(a.contexts):
            r = attempt(measure_isolated, art, c, a.new_tokens, a.provider, None, 300)
            r.setdefault("context", c)
            r["model"] = art.name
            res["runs"].append(r)
            print(r, file=sys.stderr, flush=True)
            save()
    if comp:
        cpu_threads = [t for t in (int(x) for x in a.cpu_threads.split(",")) if t > 0]
        for provider, threads in [(a.provider, None)] + [("cpu", t) for t in cpu_threads]:
            res["paired"].append({"provider": provider, "threads": threads, **attempt(paired, orig, comp, provider, threads)})
            print(res["paired"][-1], file=sys.stderr, flush=True)
            save()
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
