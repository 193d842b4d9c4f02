"""The runtime's CPU memory arena on (its default: shrunk after each multi-token run) against off
(every activation from glibc's allocator), on the default model's fp32 and int4 exports.

  python bench/arena.py [--model default] [--rounds 3] [--prompts 512 2048] [--threads 2]

Each measurement is a fresh process (peak RSS is a process's high-water mark), the two settings
alternating within a round. A process decodes 64 tokens after a 32-token prompt (peak RSS so
far: decode), then prefills a prompt of P tokens four times, each into a fresh cache (the first
untimed), then reads its RSS (after prefill) and its high-water mark (prefill peak).
Reports same-round on/off ratios. Writes bench/results/arena.json and arena.md; artifacts in
bench/_work/arena/<model>/."""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from results_io import write_results  # noqa: E402
from summarize import arena as arena_lines  # noqa: E402  (the same table in RESULTS.md)

RESULTS = Path(__file__).resolve().parent / "results"
WORK = Path(__file__).resolve().parent / "_work" / "arena"
KINDS = {"fp32": {}, "int4": {"quantize": "int4"}}
SETTINGS = ("off", "on")
MIB = 2**20


def _status(field: str) -> float:
    """A /proc/self/status memory field in MiB (VmRSS, VmHWM)."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def worker(art: str, setting: str, prompt: int, threads: int) -> dict:
    """One process's figures for one artifact, arena setting and prompt length."""
    from edgedelta.runtime import Session

    return process_figures(Session.from_dir(art, provider="cpu", threads=threads, tokenizer=None, spin="on",
                                            arena=setting == "on"), prompt)


def process_figures(s, prompt: int) -> dict:
    """A fresh process's figures for a loaded Session `s`: 64 greedy decode steps after a
    32-token prompt (median step; peak RSS so far), then a `prompt`-token prefill four times,
    each into a fresh cache, the first untimed (median tok/s; peak RSS; RSS after)."""
    vocab = s.artifact.vocab_size
    rng = np.random.default_rng(0)

    def run(ids: np.ndarray, cache) -> np.ndarray:
        past, n = cache.length, ids.shape[1]
        return s.forward(ids, np.ones((1, past + n), np.int64), np.arange(past, past + n)[None], cache)

    cache = s.new_cache(1, 32 + 64 + 1)
    tok = int(run(rng.integers(0, vocab, (1, 32)), cache)[0].argmax())
    steps = []
    for _ in range(64):
        t = time.perf_counter()
        tok = int(run(np.array([[tok]]), cache)[0].argmax())
        steps.append(time.perf_counter() - t)
    decode_peak = _status("VmHWM")
    ids, times = rng.integers(0, vocab, (1, prompt)), []
    for _ in range(4):
        cache = s.new_cache(1, prompt)
        t = time.perf_counter()
        run(ids, cache)
        times.append(time.perf_counter() - t)
    del cache
    return {"load_s": s.load_seconds, "decode_ms": 1e3 * float(np.median(steps)), "decode_peak_mib": decode_peak,
            "prefill_tok_s": prompt / float(np.median(times[1:])), "prefill_peak_mib": _status("VmHWM"),
            "rss_after_prefill_mib": _status("VmRSS")}


def artifacts(model: str) -> dict[str, Path]:
    """The model's fp32 and int4 exports, built once."""
    return exports(model, KINDS, WORK)


def exports(model: str, kinds: dict[str, dict], work: Path) -> dict[str, Path]:
    """kind -> the model exported with that kind's ExportConfig fields in work/<model>/<kind>, built once."""
    from edgedelta.export import ExportConfig, export_onnx

    out = {}
    for kind, fields in kinds.items():
        path = work / Path(model).name / kind
        if not (path / "manifest.json").is_file():
            print(f"exporting {model} {kind} to {path}", file=sys.stderr, flush=True)
            export_onnx(model, ExportConfig(**fields), path, force=True)
        out[kind] = path
    return out


def measure(arts: dict[str, Path], prompts: list[int], rounds: int, threads: int, script: str = __file__) -> dict:
    """Every (artifact, prompt, setting) in a fresh process of `script --worker PATH SETTING P
    THREADS`, the settings alternating within a round; their per-round figures and summary."""
    rows: dict[str, dict[str, list[dict]]] = {}  # "kind@P" -> setting -> one dict per round
    for r in range(rounds):
        for kind, path in arts.items():
            for p in prompts:
                got = alternate(SETTINGS, r, lambda s, path=path, p=p: [sys.executable, script, "--worker", str(path), s, str(p), str(threads)])
                for setting, row in got.items():
                    rows.setdefault(f"{kind}@{p}", {}).setdefault(setting, []).append(row)
                    print(f"round {r + 1}/{rounds} {kind} P={p} {Path(script).stem} {setting}: prefill {row['prefill_tok_s']:.0f} tok/s, "
                          f"peak {row['prefill_peak_mib']:.0f} MiB", file=sys.stderr, flush=True)
    return {"rows": rows, "summary": summarize_rows(rows)}


def alternate(labels, round_index: int, command) -> dict[str, dict]:
    """One round of fresh processes, `command(label)` for each label, in order on even rounds
    and reversed on odd ones (neither setting always runs on the warmer machine): label -> the
    JSON the process printed last."""
    out = {}
    for label in (labels if round_index % 2 == 0 else labels[::-1]):
        cmd = command(label)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:  # the worker's arguments (after `script --worker`) name what failed
            raise SystemExit(f"worker {' '.join(cmd[3:])} failed: {done.stderr.strip().splitlines()[-1:]}")
        out[label] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def summarize_rows(rows: dict[str, dict[str, list[dict]]]) -> dict:
    """Per "kind@P": each setting's medians, and the medians of same-round on/off ratios."""
    summary = {}
    for key, by in rows.items():
        on, off = by["on"], by["off"]

        def ratio(metric: str) -> float:  # median of same-round on/off ratios
            return float(np.median([a[metric] / b[metric] for a, b in zip(on, off)]))

        summary[key] = {"median": {s: {m: float(np.median([x[m] for x in by[s]])) for m in on[0]} for s in SETTINGS},
                        "on_over_off": {m: ratio(m) for m in on[0]}}
    return summary


TITLE = "# CPU memory arena: on (shrunk after each prefill) vs off"


def report(res: dict) -> str:
    return on_off_report(res, "arena", TITLE)


def on_off_report(res: dict, name: str, title: str) -> str:
    """The markdown of an on/off benchmark's results (the table: summarize.arena)."""
    return "\n".join([title, "", *arena_lines(res), "", f"Written by `bench/{name}.py`; per-process figures in `{name}.json`.", ""])


def main(argv=None) -> int:
    return on_off_main(argv, __doc__, "arena", TITLE, worker, artifacts, __file__)


def on_off_main(argv, doc: str, name: str, title: str, worker, artifacts_of, script: str) -> int:
    """main() of a benchmark that runs a setting on and off in fresh processes: `--worker PATH
    SETTING P THREADS` runs `worker` and prints its figures; otherwise parse the options, build
    `artifacts_of(model)`, measure, and write `name`.json and .md."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        art, setting, prompt, threads = argv[1:5]
        print(json.dumps(worker(art, setting, int(prompt), int(threads))))
        return 0
    import onnxruntime as ort

    a = process_args(argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter), argv)
    if a is None:
        return 2
    arts = artifacts_of(a.model)
    res = {**run_header(a, ort.__version__), **measure(arts, a.prompts, a.rounds, a.threads, script=script)}
    write_results(a.out, name, res, on_off_report(res, name, title))
    return 0


def process_args(ap: argparse.ArgumentParser, argv) -> argparse.Namespace | None:
    """The options of a fresh-process benchmark (--model, --rounds, --prompts, --threads, --out, and
    what `ap` already has), parsed; None after a one-line error on stderr for a bad value."""
    ap.add_argument("--model", default="default")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompts", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(argv)
    counts = {k: v for k, v in vars(a).items() if k in ("rounds", "threads", "alternations")}
    if min(counts.values()) < 1 or min(a.prompts) < 2:
        print(f"error: {', '.join('--' + k for k in counts)} must be >= 1 and each --prompts >= 2, got "
              f"{', '.join(str(v) for v in counts.values())}, {a.prompts}", file=sys.stderr)
        return None
    return a


def run_header(a: argparse.Namespace, ort_version: str) -> dict:
    """What a results file records of its run."""
    return {"model": a.model, "machine": platform.machine(), "threads": a.threads, "rounds": a.rounds, "prompts": a.prompts,
            "onnxruntime": ort_version}


if __name__ == "__main__":
    raise SystemExit(main())
