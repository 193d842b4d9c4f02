"""Runs one layout's weight chain (bench/unpacked_layouts.py) RUNS times in one ONNX Runtime
session, one thread, after a first run that loads and packs, between two markers that
bench/qemu/counts.c counts between: what RUNS chain runs cost, without start-up or loading.
bench/arm64_layout_counts.py runs it under that counting qemu.

    python layout_counts_guest.py LAYOUT RUNS WEIGHTS"""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort

from arm64_probe import mark
from unpacked_layouts import HIDDEN, INTERMEDIATE, chain


def main(layout: str, runs: int, count: int) -> None:
    rng = np.random.default_rng(0)
    weights = [(rng.standard_normal((HIDDEN, INTERMEDIATE) if i % 2 == 0 else (INTERMEDIATE, HIDDEN)) * 0.03).astype(np.float32)
               for i in range(count)]
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(chain(layout, weights), so, providers=["CPUExecutionProvider"])
    x = np.ones((1, 1, HIDDEN), np.float32)
    s.run(None, {"x": x})
    mark()
    for _ in range(runs):
        s.run(None, {"x": x})
    mark()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
