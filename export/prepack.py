"""Keep ONNX Runtime's weight prepacking for the weights that one node reads, and away from the
weights that several read.

ORT's CPU MatMul and FusedMatMul "prepack" a constant 2-D B into a private blocked copy per
consuming node. For a weight read by one MatMul that copy replaces the original and buys the
fast single-token kernel (SmolLM2 decode 1.1-1.2x). A weight read by k nodes (a group's shared
base, the tied embedding read by Gather and the LM head) would be held up to k + 1 times
(k + 1 on the dev machine, fewer on CI's CPU, but never once), which undoes what sharing
saves (measured: one 16.8 MB weight read by 8 MatMuls, +101 MB RSS with prepacking, +0
without; bench/results/export.md). ORT only packs a B of rank 2, so such a weight gets a leading
unit axis: the same bytes and, by broadcasting, the same result, and ORT leaves it unpacked
while it still packs every other weight. Measured on SmolLM2-135M (fp32, 2 cores, graph
revision 2; bench/results/runtime.md): peak RSS as with prepacking off; decode 1.08x prepacking
off, and 0.90x everything packed (which holds the 113 MB tied embedding twice).

Unpacked, a single-token product takes another kernel, and the layout decides which
(bench/unpacked_layouts.py: 40 chained SmolLM2 MLP weights, time against packed 2-D weights,
2 threads / 1 thread):
- (1, K, N) read by MatMul: each output column is gathered across K rows, 1.26x / 1.14x;
- (1, N, K) read by com.microsoft FusedMatMul(transB=1): each output is a dot product of two
  contiguous rows, 1.14x / 1.20x (1.03-1.11x in ad-hoc runs at other times).
So on x86_64 a weight that only MatMuls read is stored transposed; the tied embedding, also
read by Gather, keeps (1, vocab, hidden), which is (1, N, K) already. Compressed SmolLM2
decode +3-4% in a same-process A/B (bench/results/runtime.md). Those single-row kernels are
x86_64's (AVX). On arm64 MLAS has one for an untransposed B only (a GEMV); a transposed B takes
the general path, which copies B into packed blocks on every call. Counted under qemu with
ONNX Runtime's aarch64 build (bench/results/arm64_layout_counts.md), bytes moved per weight
byte: (1, K, N) under MatMul 1.03, (1, N, K) under FusedMatMul(transB=1) 3.10. So
ExportConfig(cpu_arch="arm64") keeps (1, K, N) under MatMul for the shared bases, and stores
the tied embedding transposed, (1, hidden, vocab): the LM head becomes a plain MatMul, and the
lookup a Gather on axis 2 whose (1, hidden, B, S) rows a Transpose puts back in order (one
token's hidden values, strided: a few KB per token against 113 MB for the packing copy).

The price is at batch > 1: a (B, S, K) input times a (1, ...) weight runs B products of
S rows instead of one of B*S rows, so a batched decode reads that weight B times."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .graph import MS_DOMAIN, GraphBuilder

PACKING_OPS = {"MatMul", "FusedMatMul"}  # CPU kernels that prepack a constant B (input 1)
LIFTABLE_READERS = PACKING_OPS | {"Gather"}  # ops that accept the (1, ...) layout (Gather: rows at axis 1 or 2)


def lift_shared_weights(builder: GraphBuilder, cpu_arch: str = "x86_64") -> list[str]:
    """Give every fp32 2-D initializer read by more than one node, at least one of them a
    packing MatMul, a leading unit axis, laid out for `cpu_arch`'s unpacked single-row kernel
    (see the docstring):
      x86_64: (1, N, K) read by FusedMatMul(transB=1) if only MatMuls read it, else (1, K, N);
      arm64:  (1, K, N) read untransposed; a weight that its packing readers read transposed
              (the tied embedding: Gather and the LM head's FusedMatMul(transB=1)) is stored
              transposed so that they need not.
    Gather readers index the matching axis and put their output back in order. Returns the
    lifted names. Call after the graph is complete."""
    readers: dict[str, list[tuple[int, onnx.NodeProto]]] = {}
    for node in builder.nodes:
        for slot, name in enumerate(node.input):
            if name in builder.initializers:
                readers.setdefault(name, []).append((slot, node))
    lifted = []
    for name, uses in readers.items():
        arr = builder.initializers[name]
        ops = {n.op_type for _, n in uses}
        if (arr.dtype != np.float32 or arr.ndim != 2 or len(uses) < 2 or not ops & PACKING_OPS
                or not ops <= LIFTABLE_READERS):
            continue
        if any((n.op_type in PACKING_OPS and slot != 1) or (n.op_type == "Gather" and slot != 0) for slot, n in uses):
            continue  # the weight is the A operand or the Gather indices somewhere: leave it
        packing = [n for _, n in uses if n.op_type in PACKING_OPS]
        if cpu_arch == "x86_64" and all(n.op_type == "MatMul" for _, n in uses):
            # (1, N, K) read by FusedMatMul(transB=1): each output is a dot product of two
            # contiguous rows, ORT's fast unpacked single-token kernel (see the docstring)
            builder.initializers[name] = np.ascontiguousarray(arr.T)[None]
            for node in packing:
                _matmul_to_transposed_b(builder, node)
        elif cpu_arch == "arm64" and all(_plain_transposed_b(n) for n in packing):
            # stored (1, K, N) = the transpose, so every packing reader takes MLAS's GEMV
            builder.initializers[name] = np.ascontiguousarray(arr.T)[None]
            for _, node in uses:
                if node.op_type == "Gather":
                    _gather_past_unit_axis(builder, node, transposed=True)
                else:
                    _transposed_b_to_matmul(node)
        else:
            builder.initializers[name] = arr[None]  # (1, K, N): a view, no copy
            for _, node in uses:
                if node.op_type == "Gather":
                    _gather_past_unit_axis(builder, node)
        lifted.append(name)
    return lifted


def _plain_transposed_b(node: onnx.NodeProto) -> bool:
    """FusedMatMul(A, B, transB=1) with no other attribute than alpha = 1: A @ Bᵀ."""
    if node.op_type != "FusedMatMul":
        return False
    attrs = {a.name: (a.f if a.type == onnx.AttributeProto.FLOAT else a.i) for a in node.attribute}
    return attrs.pop("transB", 0) == 1 and attrs.pop("alpha", 1.0) == 1.0 and not any(attrs.values())


def _transposed_b_to_matmul(node: onnx.NodeProto) -> None:
    """FusedMatMul(x, W, transB=1) -> MatMul(x, Wᵀ) once W is stored transposed."""
    node.op_type, node.domain = "MatMul", ""
    del node.attribute[:]


def _matmul_to_transposed_b(builder: GraphBuilder, node: onnx.NodeProto) -> None:
    """MatMul(x, W) -> com.microsoft FusedMatMul(x, Wᵀ, transB=1): the same product."""
    node.op_type, node.domain = "FusedMatMul", MS_DOMAIN
    node.attribute.extend([helper.make_attribute("transB", 1), helper.make_attribute("alpha", 1.0)])
    builder.uses_ms_domain = True


def _gather_past_unit_axis(builder: GraphBuilder, node: onnx.NodeProto, transposed: bool = False) -> None:
    """Gather(data (1, V, H), ids (B, S), axis=1) -> (1, B, S, H), then Squeeze(0) to the
    output the graph expects. transposed: data (1, H, V), axis=2 -> (1, H, B, S), then
    Transpose to (1, B, S, H) before the Squeeze. The new nodes go right after the Gather
    (topological order); they move only the looked-up rows."""
    axis = next((a for a in node.attribute if a.name == "axis"), None)
    if axis is not None and axis.i != 0:
        raise ValueError(f"Gather '{node.name}' reads a lifted weight on axis {axis.i}; only axis 0 is supported")
    if axis is None:
        node.attribute.append(helper.make_attribute("axis", 2 if transposed else 1))
    else:
        axis.i = 2 if transposed else 1
    out = node.output[0]
    node.output[0] = f"{node.name}/output_unit_axis"
    at = next(i for i, n in enumerate(builder.nodes) if n is node) + 1
    axes = f"{node.name}/squeeze_axes"
    added = [helper.make_node("Constant", [], [axes], name=axes, value=onnx.numpy_helper.from_array(np.array([0], np.int64), axes))]
    rows = node.output[0]
    if transposed:  # ids are (B, S): the embedding lookup's input_ids
        rows = f"{node.name}/rows"
        added.append(helper.make_node("Transpose", [node.output[0]], [rows], name=f"{node.name}/transpose", perm=[0, 2, 3, 1]))
    added.append(helper.make_node("Squeeze", [rows, axes], [out], name=f"{node.name}/squeeze"))
    builder.nodes[at:at] = added
