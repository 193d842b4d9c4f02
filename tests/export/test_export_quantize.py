"""MatMulNBits packing: round trip within half a quantization step, and the exact bytes
layout ORT reads (checked against the kernel itself on a single MatMulNBits node)."""

import numpy as np
import pytest
from onnx import TensorProto

from edgedelta.export.graph import MS_DOMAIN, GraphBuilder
from edgedelta.export.quantize import quantize_blockwise


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits,k", [(4, 64), (4, 40), (8, 64), (8, 40)])
def test_roundtrip_error_below_half_step(bits, k, symmetric):
    w = np.random.default_rng(0).standard_normal((24, k)).astype(np.float32)
    q = quantize_blockwise(w, bits, 16, symmetric)
    assert (q.zero_points is None) == symmetric
    deq = q.dequantize()
    step = q.scales.reshape(24, -1).repeat(16, axis=1)[:, :k]
    assert deq.shape == w.shape and np.all(np.abs(deq - w) <= 0.5 * step + 1e-6)
    assert q.packed.shape == (24, -(-k // 16), 16 * bits // 8)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", [4, 8])
def test_ort_kernel_reads_our_layout(bits, symmetric, tmp_path):
    """Symmetric: no zero-point input, the kernel's default 2^(bits-1) is the one dequantize() uses."""
    import onnxruntime as ort

    rng = np.random.default_rng(1)
    w = rng.standard_normal((48, 40)).astype(np.float32)  # (N=out, K=in), K not a block multiple
    q = quantize_blockwise(w, bits, 16, symmetric)
    b = GraphBuilder("g", 21)
    x = b.add_input("x", TensorProto.FLOAT, ["n", 40])
    tensors = (("w", q.packed), ("w.scales", q.scales)) + (() if symmetric else (("w.zero_points", q.zero_points),))
    for name, arr in tensors:
        b.initializer(name, arr)
    b.op("MatMulNBits", [x, *(n for n, _ in tensors)], domain=MS_DOMAIN, outputs=["y"], K=40, N=48, bits=bits, block_size=16)
    b.add_output("y", TensorProto.FLOAT, ["n", 48])
    b.save(tmp_path)
    xs = rng.standard_normal((3, 40)).astype(np.float32)
    got = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": xs})[0]
    np.testing.assert_allclose(got, xs @ q.dequantize().T, atol=1e-4)


def _q4_1_weights(rng, n: int, k: int, block: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Weights that are dequantized Q4_1 blocks (llama.cpp: m + d·q, q in 0..15 spanning the
    block's min and max, d and m fp16), and their codes (n, k/block, block)."""
    nb = k // block
    q = rng.integers(0, 16, (n, nb, block))
    q[..., 0], q[..., 1] = 0, 15  # the block's min and max are on the grid's ends, as llama.cpp makes them
    d = (rng.random((n, nb, 1)) * 0.02 + 1e-3).astype(np.float16).astype(np.float64)
    m = (-rng.random((n, nb, 1)) * 0.15 + 0.02).astype(np.float16).astype(np.float64)
    return (m + d * q).reshape(n, k).astype(np.float32), q


def test_float_zero_points_hold_q4_1_blocks():
    """Float zero points recover a Q4_1 block's own codes and scale; the stored codes are
    symmetric (no zero-point tensor) and the per-block offsets c = scale·(8 − zp) carry the
    rest, rounded only by the offset table's 8 bits (half a step of each row's table)."""
    w, codes = _q4_1_weights(np.random.default_rng(3), 24, 128)
    q = quantize_blockwise(w, 4, 32, float_zp=True)
    assert q.zero_points is None and q.offsets is not None and q.offsets.bits == 8
    unpacked = np.empty(q.packed.shape[:-1] + (32,), np.uint8)
    unpacked[..., 0::2], unpacked[..., 1::2] = q.packed & 15, q.packed >> 4
    np.testing.assert_array_equal(unpacked, codes)
    c = q.offsets
    assert (c.n, c.k) == (24, 4) and c.block_size == 16  # one block (one scale) per row of the (N, 4) table
    step = np.abs(c.scales).reshape(24, -1)[:, :1]  # (N, 1)
    err = np.abs(q.dequantize() - w)
    assert np.all(err <= 0.5 * step + 1e-6)
    uint = quantize_blockwise(w, 4, 32).dequantize()  # integer zero points re-round the blocks
    assert np.linalg.norm(q.dequantize() - w) < 0.2 * np.linalg.norm(uint - w)


def test_offset_table_block_sizes():
    from edgedelta.export.quantize import offset_block

    assert [offset_block(nb) for nb in (1, 16, 18, 48, 280)] == [16, 16, 32, 64, 256]
