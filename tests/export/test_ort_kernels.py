"""The graph meets ONNX Runtime's CPU kernels. Prepacking (export/prepack.py): the layout rule
for weights with several readers and its per-CPU layouts, that it changes no result, and that
ORT copies a 2-D weight when it packs it but leaves a lifted one alone, under MatMul or
FusedMatMul (a guard against an ORT upgrade changing that). Fusion: every RMSNorm is one node, and the attention scale is no node of its own."""

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from edgedelta.devices.planner import facts_of
from edgedelta.export import ExportConfig, export_onnx
from edgedelta.export.graph import GraphBuilder
from edgedelta.export.prepack import lift_shared_weights
from edgedelta.runtime.artifact import Artifact


def _graph(dtype=np.float32, lm_op="FusedMatMul"):
    """ids -> Gather(E) -> x·W -> x·W -> x·V -> lm head on E: E and W have two readers each, V one."""
    rng = np.random.default_rng(0)
    b = GraphBuilder("g", 21)
    ids = b.add_input("ids", TensorProto.INT64, ["B", "S"])
    e = b.initializer("E", rng.standard_normal((50, 8)).astype(dtype))  # (vocab, hidden)
    w = b.initializer("W", rng.standard_normal((8, 8)).astype(dtype))
    v = b.initializer("V", rng.standard_normal((8, 8)).astype(dtype))
    h = b.op("Gather", [e, ids], axis=0)
    h = b.op("MatMul", [b.op("MatMul", [b.op("MatMul", [h, w]), w]), v])
    if lm_op == "FusedMatMul":
        b.op("FusedMatMul", [h, e], domain="com.microsoft", outputs=["logits"], transB=1, alpha=1.0)
    else:  # Gemm needs 2-D operands
        b.op("Gemm", [b.op("Reshape", [h, b.const([-1, 8])]), e], outputs=["logits"], transB=1)
    shape = ["B", "S", 50] if lm_op == "FusedMatMul" else ["BS", 50]
    b.add_output("logits", TensorProto.FLOAT if dtype == np.float32 else TensorProto.FLOAT16, shape)
    return b


def _run(builder, ids, folder):
    folder.mkdir()
    path = builder.save(folder)
    onnx.checker.check_model(str(path), full_check=True)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]


def test_weights_with_several_readers_get_a_unit_axis_and_the_same_results(tmp_path):
    ids = np.array([[3, 7, 49], [0, 1, 2]], np.int64)
    before = _run(_graph(), ids, tmp_path / "2d")
    b = _graph()
    w = b.initializers["W"].copy()
    assert sorted(lift_shared_weights(b)) == ["E", "W"]
    assert b.initializers["E"].shape == (1, 50, 8)  # Gather and FusedMatMul(transB) read it as stored
    np.testing.assert_array_equal(b.initializers["W"], w.T[None])  # MatMul readers only: (1, N, K)...
    w_readers = [n for n in b.nodes if "W" in n.input]
    assert [(n.op_type, n.domain) for n in w_readers] == [("FusedMatMul", "com.microsoft")] * 2  # ...transB=1
    assert all({a.name: helper.get_attribute_value(a) for a in n.attribute} == {"transB": 1, "alpha": 1.0} for n in w_readers)
    assert b.initializers["V"].shape == (8, 8)  # one reader: ORT may pack it
    gather = next(n for n in b.nodes if n.op_type == "Gather")
    assert [a.i for a in gather.attribute if a.name == "axis"] == [1]
    np.testing.assert_allclose(_run(b, ids, tmp_path / "lifted"), before, rtol=1e-6, atol=1e-6)


def test_weights_a_reader_needs_2d_and_fp16_are_left_alone():
    b = _graph(lm_op="Gemm")
    assert lift_shared_weights(b) == ["W"]  # E also feeds Gemm, which takes 2-D operands only
    b16 = _graph(dtype=np.float16, lm_op="Gemm")
    assert lift_shared_weights(b16) == []


def test_exported_artifact_lifts_exactly_the_shared_weights(compressed_artifact):
    m = json.loads((compressed_artifact / "manifest.json").read_text())
    assert m["ort_session_config"] == {}
    model = onnx.load(str(compressed_artifact / "model.onnx"), load_external_data=False)
    readers = {}
    for n in model.graph.node:
        for x in n.input:
            readers[x] = readers.get(x, 0) + 1
    big = [t for t in model.graph.initializer if len(t.dims) >= 2]
    lifted = {t.name for t in big if len(t.dims) == 3 and t.dims[0] == 1}
    assert lifted == {t.name for t in big if readers[t.name] > 1}
    assert "embed_tokens.weight" in lifted and any(n.startswith("shared.g") for n in lifted)
    shared_readers = {n.op_type for n in model.graph.node for x in n.input if x.startswith("shared.g")}
    assert shared_readers == {"FusedMatMul"}  # stored (1, N, K), read with transB=1


def test_arm64_artifact_reads_every_lifted_weight_untransposed_with_the_same_logits(tiny_dirs, compressed_artifact, tmp_path):
    """cpu_arch='arm64': the shared bases stay (1, K, N) under MatMul and the tied embedding is
    stored (1, H, V) for a plain MatMul LM head, the layout MLAS's arm64 single-row kernel
    reads without copying; no FusedMatMul is left. The function is the x86_64 artifact's."""
    art = export_onnx(tiny_dirs["compressed"], ExportConfig(cpu_arch="arm64"), tmp_path / "arm64")
    assert json.loads((art / "manifest.json").read_text())["export_config"]["cpu_arch"] == "arm64"
    # the device planner reads it back (its report names devices of the other CPU family)
    assert [facts_of(Artifact.open(d)).cpu_arch for d in (art, compressed_artifact)] == ["arm64", "x86_64"]
    graphs = {a: onnx.load(str(d / "model.onnx"), load_external_data=False).graph for a, d in
              (("arm64", art), ("x86_64", compressed_artifact))}
    dims = {}
    for arch, op in (("arm64", "MatMul"), ("x86_64", "FusedMatMul")):
        g = graphs[arch]
        dims[arch] = {t.name: list(t.dims) for t in g.initializer if t.name.startswith("shared.g")}
        assert {n.op_type for n in g.node for x in n.input if x in dims[arch]} == {op}, arch
    assert dims["x86_64"] == {k: [1, d[2], d[1]] for k, d in dims["arm64"].items()}  # the same tensors, transposed
    embed = {arch: next(t for t in g.initializer if t.name == "embed_tokens.weight") for arch, g in graphs.items()}
    vocab, hidden = embed["x86_64"].dims[1:]
    assert list(embed["arm64"].dims) == [1, hidden, vocab]
    for arch, head in (("arm64", "MatMul"), ("x86_64", "FusedMatMul")):
        assert {n.op_type for n in graphs[arch].node if "embed_tokens.weight" in n.input} == {"Gather", head}, arch
    assert not any(n.op_type == "FusedMatMul" for n in graphs["arm64"].node)
    ids = np.array([[5, 9, 2, 77, 3], [1, 4, 4, 60, 8]], np.int64)  # a batch: the transposed lookup keeps rows apart
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.tile(np.arange(5), (2, 1))}
    logits = []
    for d in (art, compressed_artifact):
        s = ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"])
        past = {i.name: np.zeros((2, i.shape[1], 0, i.shape[3]), np.float32)  # (B, kv_heads, past, head_dim)
                for i in s.get_inputs() if i.name.startswith("past")}
        logits.append(s.run(["logits"], {**feeds, **past})[0])
    np.testing.assert_allclose(logits[0], logits[1], rtol=1e-5, atol=1e-5)


def test_lifted_weights_broadcast_over_a_batch(compressed_artifact):
    """A (B, S, K) activation times a (1, N, K) or (1, K, N) weight: each row of a batch of two
    gets the logits it gets alone."""
    s = ort.InferenceSession(str(compressed_artifact / "model.onnx"), providers=["CPUExecutionProvider"])

    def logits(ids):
        past = {i.name: np.zeros((ids.shape[0], i.shape[1], 0, i.shape[3]), np.float32)
                for i in s.get_inputs() if i.name.startswith("past")}
        pos = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
        return s.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": pos, **past})[0]

    ids = np.array([[5, 9, 2, 77, 3], [40, 8, 11, 1, 60]], np.int64)
    both = logits(ids)
    for row in range(2):
        np.testing.assert_allclose(both[row], logits(ids[row:row + 1])[0], rtol=1e-5, atol=1e-5)


def test_fp16_artifact_keeps_2d_weights_prepacking_off_and_unfused_norms(tiny_dirs, tmp_path):
    art = export_onnx(tiny_dirs["compressed"], ExportConfig(dtype="fp16", validate=False), tmp_path / "art")
    m = json.loads((art / "manifest.json").read_text())
    assert m["ort_session_config"] == {"session.disable_prepacking": "1"}
    model = onnx.load(str(art / "model.onnx"), load_external_data=False)
    assert all(len(t.dims) <= 2 for t in model.graph.initializer)
    # and its residual Adds stay apart from the norms, rounded to fp16 in between as in HF
    assert "SkipSimplifiedLayerNormalization" not in {n.op_type for n in model.graph.node}


_RSS_PROBE = r"""
import resource, sys, numpy as np, onnx, onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
K, readers, path = 2896, 4, sys.argv[2]
layout = sys.argv[1]
w = np.random.default_rng(0).standard_normal((K, K)).astype(np.float32) / K  # 32 MiB
w = w[None] if layout.startswith("lifted") else w
op, attrs = ("FusedMatMul", {"domain": "com.microsoft", "transB": 1}) if layout == "lifted_transB" else ("MatMul", {})
# a chain, so that no two readers have the same inputs (ORT would merge identical nodes)
nodes = [helper.make_node(op, ["x" if i == 0 else f"y{i - 1}", "W"], [f"y{i}"], **attrs) for i in range(readers)]
g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, K])],
                      [helper.make_tensor_value_info(f"y{readers - 1}", TensorProto.FLOAT, None)],
                      [numpy_helper.from_array(w, "W")])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
onnx.save(m, path, save_as_external_data=True, location="w.data")
del m, g, w
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) // 1024
before = rss()
so = ort.SessionOptions()
if layout == "2d_prepack_off":
    so.add_session_config_entry("session.disable_prepacking", "1")
s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
s.run(None, {"x": np.ones((1, 1, K), np.float32)})
print(rss() - before)
"""


def test_ort_copies_a_2d_weight_when_packing_but_not_a_lifted_one(tmp_path):
    def grown_by(layout: str) -> int:  # MiB of RSS a fresh process gains by opening the graph
        folder = tmp_path / layout
        folder.mkdir(exist_ok=True)
        out = subprocess.run([sys.executable, "-c", _RSS_PROBE, layout, str(folder / "m.onnx")],
                             capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1])

    grown = {layout: grown_by(layout) for layout in ("2d", "2d_prepack_off", "lifted", "lifted_transB")}
    # How many packed copies ORT makes of a 32 MiB 2-D weight with 4 readers depends on the CPU:
    # one per reader on this project's dev machine (136 MiB against 41 unpacked), fewer on
    # another (73). Either way it is at least one copy, which is why shared weights are lifted.
    # One clean-checkout run in many measured no copy at all (41, as unpacked), so the premise
    # takes the larger of two fresh processes...
    if grown["2d"] < grown["2d_prepack_off"] + 16:
        grown["2d"] = max(grown["2d"], grown_by("2d"))
    assert grown["2d"] >= grown["2d_prepack_off"] + 16, grown  # at least half of a 32 MiB copy
    # ...and a lifted weight, with ORT's default prepacking on, costs no more than no packing,
    # whether MatMul reads it or FusedMatMul with transB (the layout of a shared base).
    for layout in ("lifted", "lifted_transB"):
        assert grown[layout] <= grown["2d_prepack_off"] + 8, grown
        assert grown[layout] <= 32 + 16, grown


def _ort_optimized_ops(artifact, tmp_path):
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(artifact / "model.onnx"), so, providers=["CPUExecutionProvider"])
    return onnx.load(so.optimized_model_filepath, load_external_data=False).graph.node


def test_ort_fuses_every_rms_norm_and_attention_scale(compressed_artifact, tmp_path):
    """The first RMSNorm is emitted as Pow(x, 2) -> ReduceMean -> Add -> Sqrt -> Div -> Mul,
    the pattern ONNX Runtime fuses into one SimplifiedLayerNormalization (Mul(x, x) is not);
    every later one takes the residual Add with it as SkipSimplifiedLayerNormalization. The
    attention scale is a Mul right on the score MatMul, which ORT folds into FusedMatMul's
    alpha (after a Reshape it would stay a pass over the scores). The mask is added, not
    selected by a Where per layer."""
    nodes = _ort_optimized_ops(compressed_artifact, tmp_path)
    ops = [n.op_type for n in nodes]
    arch = json.loads((compressed_artifact / "manifest.json").read_text())["architecture"]
    layers = arch["num_layers"]
    assert ops.count("SimplifiedLayerNormalization") == 1
    assert ops.count("SkipSimplifiedLayerNormalization") == 2 * layers
    assert "ReduceMean" not in ops and "Sqrt" not in ops
    scale = arch["head_dim"] ** -0.5
    alphas = [a.f for n in nodes if n.op_type == "FusedMatMul" for a in n.attribute if a.name == "alpha"]
    assert sum(abs(a - scale) < 1e-7 for a in alphas) == layers, alphas
    # the mask is made additive once; a broadcasting Where per layer took 28% of a 1k prefill
    assert ops.count("Where") == 1
