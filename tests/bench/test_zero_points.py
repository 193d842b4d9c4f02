"""bench/zero_points.py's Q4_1 recovery: dequantized Q4_1 blocks are found on their grid and
rebuilt exactly from (codes, d, m); weights off any grid are not."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import zero_points  # noqa: E402


def test_q4_1_blocks_are_recovered_exactly_and_others_are_not():
    rng = np.random.default_rng(0)
    q = rng.integers(0, 16, (4, 3, 32))
    q[..., 0], q[..., 1] = 0, 15  # llama.cpp's Q4_1: the block's min and max are codes 0 and 15
    d = rng.random((4, 3)).astype(np.float32)
    m = -rng.random((4, 3)).astype(np.float32)
    w = (m[..., None] + d[..., None] * q).astype(np.float32).reshape(4, 96)
    codes, d2, m2, exact = zero_points.q4_1_blocks(w)
    assert exact.all() and np.array_equal(codes, q)
    np.testing.assert_allclose((m2[..., None] + d2[..., None] * codes).reshape(4, 96), w, atol=1e-6)
    noisy = w + 0.01 * rng.standard_normal(w.shape).astype(np.float32)
    assert not zero_points.q4_1_blocks(noisy)[3].any()
