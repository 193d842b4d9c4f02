"""The rows of a block-quantized table, gathered and dequantized in the graph.

A quantized export stores the embedding table once, as MatMulNBits tensors (packed (N, blocks,
block·bits/8) uint8, scales (N, blocks), zero points (N, packed bytes) unless symmetric) that
the tied LM head's MatMulNBits reads; the lookup reads the same tensors here, a dozen small ops
on the (B, S) looked-up rows only.

ONNX Runtime's GatherBlockQuantized can read the same packed table too (quantize_axis = 2, one
block per innermost row), but it wants scales of the data's rank, (N, blocks, 1), which
MatMulNBits refuses: a Reshape that ORT folds into a copy at load, and for uint zero points a
second, unpacked table. bench/embedding_lookup.py builds that graph over the same weight file
and measures both (bench/results/embedding_lookup.md): the same logits; GatherBlockQuantized
decodes a little faster, prefills a little slower, and its prefill peak RSS is higher. Peak
memory decides whether a model fits a device, so the export keeps this form."""

from __future__ import annotations

import numpy as np
from onnx import helper

from .graph import GraphBuilder


def dequantizing_gather(b: GraphBuilder, q, ids: str, to: int) -> str:
    """(B, S) ids -> (B, S, K) rows of the QRef `q`'s weight, dequantized to ONNX type `to`."""
    packed, scales = q.names[:2]
    qw = q.q
    nb = qw.packed.shape[1]
    rows = b.op("Gather", [packed, ids], axis=0)  # (B, S, nb, block*bits/8) uint8
    vals = _unpack(b, rows, qw.bits)  # (B, S, nb, block)
    sc = b.op("Gather", [scales, ids], axis=0)  # (B, S, nb)
    if len(q.names) == 2:  # symmetric: every zero point is 2^(bits-1)
        mid = b.const(float(1 << (qw.bits - 1)), helper.tensor_dtype_to_np_dtype(to))
        centred = b.op("Sub", [b.op("Cast", [vals], to=to), mid])
    else:
        zp_rows = b.op("Gather", [q.names[2], ids], axis=0)  # (B, S, nb*bits/8 rounded up)
        zp_vals = _unpack(b, zp_rows, qw.bits)  # (B, S, >= nb)
        zp_vals = b.op("Slice", [zp_vals, b.const([0]), b.const([nb]), b.const([-1])])  # (B, S, nb)
        centred = b.op("Sub", [b.op("Cast", [vals], to=to), b.op("Unsqueeze", [b.op("Cast", [zp_vals], to=to), b.const([-1])])])
    deq = b.op("Mul", [centred, b.op("Unsqueeze", [sc, b.const([-1])])])  # (B, S, nb, block)
    flat = b.op("Reshape", [deq, b.const([0, 0, -1])])  # (B, S, nb*block)
    return flat if nb * qw.block_size == qw.k else b.op("Slice", [flat, b.const([0]), b.const([qw.k]), b.const([-1])])


def _unpack(b: GraphBuilder, x: str, bits: int) -> str:
    """uint8 (..., n) holding two 4-bit values a byte (low nibble first) -> (..., 2n)."""
    if bits == 8:
        return x
    lo = b.op("BitwiseAnd", [x, b.const(15, np.uint8)])
    hi = b.op("BitShift", [x, b.const(4, np.uint8)], direction="RIGHT")
    pair = b.op("Concat", [b.op("Unsqueeze", [lo, b.const([-1])]), b.op("Unsqueeze", [hi, b.const([-1])])], axis=-1)  # (..., n, 2)
    shape = b.op("Shape", [pair])
    lead = b.op("Slice", [shape, b.const([0]), b.const([-2])])
    return b.op("Reshape", [pair, b.op("Concat", [lead, b.const([-1])], axis=0)])
