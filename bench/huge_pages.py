"""The runtime's prepacked weights on transparent huge pages (Session.from_dir(huge_pages=True),
its default on CPU: runtime/memory.py collapse_huge_pages) against 4 KiB pages, on the default
model's fp32 and int4 exports (the ones bench/runtime.py builds).

  python bench/huge_pages.py [--rounds 3] [--prompts 512 2048] [--threads 2]

Each measurement is a fresh process, the two settings alternating within a round, with
bench/arena.py's figures: load time, 64 decode steps after a 32-token prompt (median step; peak
RSS so far), then a prefill of each prompt length four times (median tok/s; peak RSS; RSS
after). Reports same-round on/off ratios. Writes bench/results/huge_pages.json and .md."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # last: only an installed edgedelta has export, runtime, devices

from arena import measure, process_args, process_figures, run_header  # noqa: E402
from results_io import write_results  # noqa: E402

WORK = Path(__file__).resolve().parent / "_work"


def worker(art: str, setting: str, prompt: int, threads: int) -> dict:
    from edgedelta.runtime import Session

    return process_figures(Session.from_dir(art, provider="cpu", threads=threads, tokenizer=None, spin="on",
                                            huge_pages=setting == "on"), prompt)


def report(res: dict) -> str:
    from summarize import arena

    return "\n".join(["# Prepacked weights on transparent huge pages: on vs off", "", *arena(res), "",
                      "Written by `bench/huge_pages.py`; per-process figures in `huge_pages.json`.", ""])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        art, setting, prompt, threads = argv[1:5]
        print(json.dumps(worker(art, setting, int(prompt), int(threads))))
        return 0
    import onnxruntime as ort

    from runtime_artifacts import ensure_artifacts, ensure_quantized

    a = process_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter), argv)
    if a is None:
        return 2
    if a.model != "default":
        print(f"error: --model {a.model}: this benchmark runs the default model's exports only", file=sys.stderr)
        return 2
    fp32, _, _ = ensure_artifacts(WORK, log=lambda m: print(m, file=sys.stderr), original_only=True)
    arts = {"fp32": fp32, "int4": ensure_quantized(WORK, log=lambda m: print(m, file=sys.stderr))}
    res = {**run_header(a, ort.__version__), **measure(arts, a.prompts, a.rounds, a.threads, script=__file__)}
    write_results(a.out, "huge_pages", res, report(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
