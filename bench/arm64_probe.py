"""One artifact, one fixed prompt, through edgedelta's runtime: the prompt's last logits and
16 greedy tokens, as JSON on stdout. bench/arm64_emulated.py runs it on this host and inside
an emulated aarch64 Debian on a device bundle's install, and compares the two.
Needs only edgedelta's device runtime (no torch), so it runs from a bundle's venv.

    python arm64_probe.py ARTIFACT [--count-decode N]

--count-decode N: N decode steps (after a first one), one thread, between the two markers bench/qemu/counts.c
counts between (bench/arm64_layout_counts.py: bytes moved per token on aarch64)."""

from __future__ import annotations

import json
import os
import platform
import sys

import numpy as np

PROMPT = "The conveyor belt on line 3 stopped because"
NEW_TOKENS = 16
MARK = 0x65646765  # "edge": bench/qemu/counts.c's marker


def probe(artifact: str, count_decode: int = 0) -> dict:
    import onnxruntime

    from edgedelta.runtime import Session

    # counting: one thread, and no checksum pass (hashing 500 MB under emulation takes minutes)
    s = Session.from_dir(artifact, provider="cpu", threads=1 if count_decode else None, verify=not count_decode)
    ids = s.tokenizer.encode(PROMPT)
    n = len(ids)
    steps = count_decode + 1 if count_decode else NEW_TOKENS
    cache = s.new_cache(1, n + steps + 1)
    # prefill (1, n) -> last-position logits (1, vocab); then one token per step
    logits = s.forward(np.array([ids], np.int64), np.ones((1, n), np.int64), np.arange(n, dtype=np.int64)[None], cache)
    first = logits[0].astype(np.float64)
    tokens = []
    for step in range(steps):
        if count_decode and step == 1:  # the first decode step shrinks the prefill's logits buffer
            mark()
        tok = int(logits[0].argmax())
        tokens.append(tok)
        p = cache.length
        logits = s.forward(np.array([[tok]], np.int64), np.ones((1, p + 1), np.int64), np.array([[p]], np.int64), cache)
    if count_decode:
        mark()
    return {"machine": platform.machine(), "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "prompt_tokens": n, "tokens": tokens,
            "text": s.tokenizer.decode(tokens), "first_logits": first.tolist()}


def mark() -> None:
    """lseek(-1, MARK): EBADF, and a marker for bench/qemu/counts.c (also bench/layout_counts_guest.py's)."""
    try:
        os.lseek(-1, MARK, os.SEEK_SET)
    except OSError:
        pass


if __name__ == "__main__":
    count = int(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[2] == "--count-decode" else 0
    json.dump(probe(sys.argv[1], count), sys.stdout)
