"""Which layout of an unpacked weight ONNX Runtime's CPU kernels read fastest for one token
(export/prepack.py: shared weights stay out of prepacking, so their layout picks the kernel).

A chain of SmolLM2-135M's MLP weights (576 x 1536, then 1536 x 576, ...; 141 MB in all, far
beyond the caches) times a (1, 1, 576) activation, as a decode step does, in three layouts:

  packed_2d      (K, N) under MatMul, prepacked by ORT (what a weight with one reader gets)
  lifted_kn      (1, K, N) under MatMul: unpacked, MLAS's single-row kernel for a plain B
  lifted_nk      (1, N, K) under com.microsoft FusedMatMul(transB=1): unpacked, the kernel
                 for a transposed B (the x86_64 export layout of shared bases)

Sessions alternate in rounds, per thread count; reported as time / packed_2d time (ratios:
the host is shared). Writes bench/results/unpacked_layouts.json and .md.

    python bench/unpacked_layouts.py [--threads 1,2] [--rounds 9]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.append(str(Path(__file__).resolve().parents[1]))  # last: only an installed edgedelta has export, runtime, devices

from edgedelta.fsutil import write_json_atomic, write_text_atomic  # noqa: E402

HIDDEN, INTERMEDIATE, WEIGHTS = 576, 1536, 40
LAYOUTS = ("packed_2d", "lifted_kn", "lifted_nk")
RESULTS = Path(__file__).parent / "results"


def chain(layout: str, weights: list[np.ndarray]) -> bytes:
    """x (1, 1, H) through every weight in turn, stored and read as `layout`."""
    nodes, inits, x = [], [], "x"
    for i, w in enumerate(weights):
        if layout == "packed_2d":
            stored, node = w, helper.make_node("MatMul", [x, f"w{i}"], [f"y{i}"])
        elif layout == "lifted_kn":
            stored, node = w[None], helper.make_node("MatMul", [x, f"w{i}"], [f"y{i}"])
        else:
            stored = np.ascontiguousarray(w.T)[None]
            node = helper.make_node("FusedMatMul", [x, f"w{i}"], [f"y{i}"], domain="com.microsoft", transB=1, alpha=1.0)
        inits.append(numpy_helper.from_array(stored, f"w{i}"))
        nodes.append(node)
        x = f"y{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, HIDDEN])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], inits)
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def measure(threads: int, rounds: int, runs: int, weights: list[np.ndarray]) -> dict:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as edgedelta.runtime runs
    sessions = {k: ort.InferenceSession(chain(k, weights), so, providers=["CPUExecutionProvider"]) for k in LAYOUTS}
    x = np.random.default_rng(1).standard_normal((1, 1, HIDDEN)).astype(np.float32)
    outs = {k: s.run(None, {"x": x})[0] for k, s in sessions.items()}
    for k in LAYOUTS[1:]:  # the same function in every layout
        np.testing.assert_allclose(outs[k], outs["packed_2d"], rtol=1e-3, atol=1e-5)
    ms = {k: [] for k in LAYOUTS}
    for _ in range(rounds):
        for k, s in sessions.items():
            s.run(None, {"x": x})
            t = time.perf_counter()
            for _ in range(runs):
                s.run(None, {"x": x})
            ms[k].append((time.perf_counter() - t) / runs * 1e3)
    # per round, so a burst on the shared host hits numerator and denominator alike
    ratios = {k: statistics.median(a / b for a, b in zip(ms[k], ms["packed_2d"])) for k in LAYOUTS}
    return {"median_ms": {k: statistics.median(v) for k, v in ms.items()}, "ratio_to_packed": ratios, "per_round_ms": ms}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--runs", type=int, default=30, help="chain runs per round and layout")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    weights = [(rng.standard_normal((HIDDEN, INTERMEDIATE) if i % 2 == 0 else (INTERMEDIATE, HIDDEN)) * 0.03).astype(np.float32)
               for i in range(WEIGHTS)]
    mb = sum(w.nbytes for w in weights) / 1e6
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "platform": platform.platform(), "machine": platform.machine(),
           "onnxruntime": ort.__version__, "weights_mb": mb, "by_threads": {}}
    for t in (int(x) for x in a.threads.split(",")):
        print(f"threads {t} ...", file=sys.stderr, flush=True)
        res["by_threads"][t] = measure(t, a.rounds, a.runs, weights)
    RESULTS.mkdir(exist_ok=True)
    write_json_atomic(RESULTS / "unpacked_layouts.json", res)
    rows = [f"| {t} | {k} | {r['median_ms'][k]:.2f} | {mb / r['median_ms'][k]:.1f} | {r['ratio_to_packed'][k]:.2f} |"
            for t, r in res["by_threads"].items() for k in LAYOUTS]
    md = ["# Unpacked weight layouts, one token", "",
          f"{res['date']}; {res['platform']}; onnxruntime {res['onnxruntime']}. {WEIGHTS} chained SmolLM2 MLP weights "
          f"({mb:.0f} MB) times one token; layouts as in bench/unpacked_layouts.py; sessions alternate per round "
          f"({a.rounds} rounds of {a.runs} runs).", "",
          "| threads | layout | median ms per chain | GB/s | time / packed_2d (per-round median) |", "|---|---|---|---|---|",
          *rows, ""]
    write_text_atomic(RESULTS / "unpacked_layouts.md", "\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
