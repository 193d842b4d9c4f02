"""What the delta branches cost a decode step, timed without ONNX Runtime's profiler (which adds
a fixed cost per node and so inflates small nodes).

Timing-only variants of the compressed artifact's graph, each run interleaved with the
artifact itself in one process (bench/runtime.py paired_decode), per thread count:

  no_scale_mul   the per-projection scale Muls removed (what folding every scale into the
                 norms and the attention scale could buy at most)
  bases_only     the delta branches removed (x·A, ·B', their Add and the scale Mul): the
                 shared bases alone, still unpacked
  int4_deltas    each delta MatMul a MatMulNBits over the same A or B', 4-bit, block 32,
                 fp32 compute (accuracy_level 0): 8x fewer delta bytes
  int8_deltas    the same, 8-bit, int8 compute (accuracy_level 4: activations rounded to int8)

The first two compute the wrong thing on purpose: only their step time is used. The quantized
ones are what a delta-only quantization would export; their prefill logits are compared with
the artifact's. Reported as variant tok/s over the artifact's (ratios: the host is shared). Needs bench/runtime_artifacts.py's compressed
artifact (bench/_work/smollm2-delta-onnx). Writes bench/results/delta_cost.json and .md.

    python bench/delta_cost.py [--threads 1,2]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # last: only an installed edgedelta has export, runtime, devices
sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS = Path(__file__).parent / "results"
VARIANTS = ("no_scale_mul", "bases_only", "int4_deltas", "int8_deltas")
QUANTIZED = {"int4_deltas": (4, 0), "int8_deltas": (8, 4)}  # bits, MatMulNBits accuracy_level
BLOCK = 32  # ExportConfig's default block size


def variant_graph(model, kind: str):
    """A copy of `model` (onnx.ModelProto, external data not loaded) without the scale Muls
    and, for 'bases_only', without each projection's delta Add; dead nodes and initializers pruned."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    producer = {o: n for n in g.node for o in n.output}
    renamed: dict[str, str] = {}
    dropped = set()
    for n in g.node:
        # the exporter's scale: Mul(y, '<prefix>.scale'); its delta join: Add(base, delta) where
        # delta = MatMul(MatMul(x, '<prefix>.delta_A'), '<prefix>.delta_B')
        if n.op_type == "Mul" and any(x.endswith(".scale") for x in n.input):
            dropped.add(id(n))
            renamed[n.output[0]] = next(x for x in n.input if not x.endswith(".scale"))
        elif kind == "bases_only" and n.op_type == "Add":
            delta = [x for x in n.input if x in producer and any(w.endswith(".delta_B") for w in producer[x].input)]
            if len(delta) == 1:
                dropped.add(id(n))
                renamed[n.output[0]] = next(x for x in n.input if x != delta[0])

    def resolve(name: str) -> str:
        while name in renamed:
            name = renamed[name]
        return name

    kept = [n for n in g.node if id(n) not in dropped]
    for n in kept:
        n.input[:] = [resolve(x) for x in n.input]
    live = {o.name for o in g.output}
    alive = []
    for n in reversed(kept):
        if any(o in live for o in n.output):
            alive.append(n)
            live.update(n.input)
    g.ClearField("node")
    g.node.extend(reversed(alive))
    inits = [i for i in g.initializer if i.name in live]
    g.ClearField("initializer")
    g.initializer.extend(inits)
    return m


def quantized_delta_graph(model, art: Path, bits: int, accuracy_level: int):
    """A copy of `model` with every delta MatMul (x·A, then ·B') a com.microsoft MatMulNBits over
    the same weight quantized blockwise (export/quantize.py), its tensors inline."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from edgedelta.export.quantize import quantize_blockwise

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    nodes, new_inits, replaced = [], [], set()
    for n in g.node:
        w = next((x for x in n.input if x.endswith((".delta_A", ".delta_B"))), None)
        if n.op_type != "MatMul" or w is None:
            nodes.append(n)
            continue
        kn = numpy_helper.to_array(inits[w], base_dir=str(art)).astype(np.float32)  # (K, N): MatMul's B
        q = quantize_blockwise(np.ascontiguousarray(kn.T), bits, BLOCK)  # MatMulNBits reads (N, K)
        names = [f"{w}.q", f"{w}.q.scales", f"{w}.q.zero_points"]
        new_inits += [numpy_helper.from_array(a, nm) for a, nm in zip((q.packed, q.scales, q.zero_points), names)]
        nodes.append(helper.make_node("MatMulNBits", [n.input[0], *names], list(n.output), name=n.name, domain="com.microsoft",
                                      K=q.k, N=q.n, bits=bits, block_size=BLOCK, accuracy_level=accuracy_level))
        replaced.add(w)
    g.ClearField("node")
    g.node.extend(nodes)
    kept = [i for i in g.initializer if i.name not in replaced]
    g.ClearField("initializer")
    g.initializer.extend(kept + new_inits)
    return m


def prefill_logits(e) -> np.ndarray:
    """Last-position logits [V] of the benchmark prompt."""
    import numpy as np

    ids = np.array([e.ids], np.int64)
    cache = e.s.new_cache(1, ids.shape[1])
    return e.s.forward(ids, np.ones_like(ids), np.arange(ids.shape[1])[None], cache)[0].copy()


class GraphEngine:
    """bench/runtime.py's engine interface (.s, .ids) over one graph file of the artifact."""

    def __init__(self, art: Path, graph: Path, threads: int):
        import onnxruntime as ort

        from edgedelta.runtime import Session
        from edgedelta.runtime.artifact import Artifact
        from edgedelta.runtime.session import artifact_session_options
        from edgedelta.runtime.tokenizer import LightTokenizer
        from runtime import PROMPT  # bench/runtime.py

        a = Artifact.open(art, verify=False)
        sess = ort.InferenceSession(str(graph), sess_options=artifact_session_options(a, threads),
                                    providers=["CPUExecutionProvider"])
        self.s = Session(a, sess, "cpu", None, 0.0)
        self.ids = LightTokenizer(art)(PROMPT)["input_ids"]


def report(res: dict) -> str:
    from edgedelta.devices.tables import table

    def logits(kind):
        v = res[kind]
        return f"{v['max_abs_logit_diff']:.3f}" if "max_abs_logit_diff" in v else "-"

    rows = [[r["variant"], res[r["variant"]]["nodes_removed"], r["threads"], f"{r['ratio']:.3f}",
             f"{r['ms_per_token']['a']:.2f} / {r['ms_per_token']['b']:.2f}", logits(r["variant"])] for r in res["runs"]]
    intro = [x for para in __doc__.split("\n\n")[1:4] for x in (para, "")]
    return "\n".join([f"# What the delta branches cost a decode step ({res['date']})", "", *intro,
                      table(["variant", "nodes removed", "threads", "variant / artifact tok/s", "ms per token artifact / variant",
                             "max abs logit diff vs artifact"],
                            rows=rows, markdown=True), "",
                      f"The artifact's graph has {res['nodes']} nodes. Interleaved every 16 greedy steps, 24 blocks each; "
                      "the ratio is of median step times.", ""])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", default=str(Path(__file__).parent / "_work" / "smollm2-delta-onnx"))
    ap.add_argument("--threads", default="1,2")
    a = ap.parse_args()
    import onnx

    from edgedelta.fsutil import write_json_atomic, write_text_atomic
    from runtime import paired_decode  # bench/runtime.py

    art = Path(a.artifact)
    if not (art / "model.onnx").is_file():
        print(f"delta_cost: no artifact at '{art}' (build it with bench/runtime_artifacts.py)", file=sys.stderr)
        return 2
    model = onnx.load(str(art / "model.onnx"), load_external_data=False)
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "artifact": str(art), "platform": platform.platform(),
           "nodes": len(model.graph.node), "runs": []}
    # the variants live beside model.onnx for the length of the run (their external data is the
    # artifact's, found relative to the graph file)
    graphs = {kind: art / f".delta_cost_{kind}.onnx" for kind in VARIANTS}
    try:
        for kind in VARIANTS:
            m = quantized_delta_graph(model, art, *QUANTIZED[kind]) if kind in QUANTIZED else variant_graph(model, kind)
            onnx.save(m, str(graphs[kind]))
            res[kind] = {"nodes_removed": len(model.graph.node) - len(m.graph.node), "nodes": len(m.graph.node)}
        for i, threads in enumerate(int(t) for t in a.threads.split(",")):
            base = GraphEngine(art, art / "model.onnx", threads)
            for kind in VARIANTS:
                e = GraphEngine(art, graphs[kind], threads)
                if i == 0 and kind in QUANTIZED:
                    ref, got = prefill_logits(base), prefill_logits(e)
                    res[kind].update(max_abs_logit_diff=float(abs(got - ref).max()), argmax_equal=bool(got.argmax() == ref.argmax()))
                r = paired_decode(base, e)
                r.pop("block_pair_ratios")
                res["runs"].append({"variant": kind, "threads": threads, **r})
                print(res["runs"][-1], file=sys.stderr, flush=True)
    finally:
        for g in graphs.values():
            g.unlink(missing_ok=True)
    RESULTS.mkdir(exist_ok=True)
    write_json_atomic(RESULTS / "delta_cost.json", res)
    write_text_atomic(RESULTS / "delta_cost.md", report(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
