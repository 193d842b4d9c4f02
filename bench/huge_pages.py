"""The runtime's prepacked weights on transparent huge pages (Session.from_dir(huge_pages=True),
its default on CPU: runtime/memory.py collapse_huge_pages) against 4 KiB pages, on the default
model's fp32 and int4 exports (the ones bench/runtime.py builds).

  python bench/huge_pages.py [--rounds 3] [--prompts 512 2048] [--threads 2]

Each measurement is a fresh process, the two settings alternating within a round, with
bench/arena.py's figures: load time, 64 decode steps after a 32-token prompt (median step; peak
RSS so far), then a prefill of each prompt length four times (median tok/s; peak RSS; RSS
after). Reports same-round on/off ratios. Writes bench/results/huge_pages.json and .md."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # last: only an installed edgedelta has export, runtime, devices

from arena import on_off_main, on_off_report, process_figures  # noqa: E402

WORK = Path(__file__).resolve().parent / "_work"


def worker(art: str, setting: str, prompt: int, threads: int) -> dict:
    from edgedelta.runtime import Session

    return process_figures(Session.from_dir(art, provider="cpu", threads=threads, tokenizer=None, spin="on",
                                            huge_pages=setting == "on"), prompt)


TITLE = "# Prepacked weights on transparent huge pages: on vs off"


def report(res: dict) -> str:
    return on_off_report(res, "huge_pages", TITLE)


def artifacts(model: str) -> dict[str, Path]:
    """The default model's fp32 and int4 exports, as bench/runtime.py builds them."""
    from runtime_artifacts import ensure_artifacts, ensure_quantized

    if model != "default":
        raise SystemExit(f"error: --model {model}: this benchmark runs the default model's exports only")
    say = lambda m: print(m, file=sys.stderr)  # noqa: E731
    return {"fp32": ensure_artifacts(WORK, log=say, original_only=True)[0], "int4": ensure_quantized(WORK, log=say)}


def main(argv=None) -> int:
    return on_off_main(argv, __doc__, "huge_pages", TITLE, worker, artifacts, __file__)


if __name__ == "__main__":
    raise SystemExit(main())
