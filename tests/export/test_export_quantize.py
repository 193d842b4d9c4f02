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
