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


def test_decode_ab_times_the_zero_point_forms_of_one_model(tmp_path, monkeypatch):
    """The decode comparison exports the model in each form (uint4 zero points, symmetric, float
    zero points), runs them in alternation and reports ratios against symmetric; the symmetric
    data file is the smallest (no zero points, no offset tables)."""
    from tests.tiny import tiny_model, tiny_tokenizer

    src = tmp_path / "src"
    tiny_model("llama").save_pretrained(src)
    tiny_tokenizer().save_pretrained(src)
    monkeypatch.setattr(zero_points, "WORK", tmp_path / "work")
    d = zero_points.decode_ab(str(src), threads=1, alternations=2, steps=3)
    assert d["uint4_over_none"] > 0 and d["float_over_none"] > 0 and set(d["step_ms_median"]) == {"uint4", "none", "float"}
    assert d["file_mib"]["none"] < d["file_mib"]["uint4"] and d["file_mib"]["none"] < d["file_mib"]["float"]
    assert len(d["float_over_none_quartiles"]) == 2
    res = {"machine": "x", "threads": 1, "onnxruntime": "v", "kernels": [], "decode": d,
           "weights": {"model": "m", "tensors": 1, "blocks": 1, "blocks_on_q4_1_grid": 1, "rel_err_uint4_zp": 0.1, "rel_err_float_zp": 0.0}}
    assert f"uint4 / none: {d['uint4_over_none']:.3f}" in zero_points.report(res)
    assert f"float / none: {d['float_over_none']:.3f}" in zero_points.report(res)
