"""Quantization methods (export/quant_methods.py) on random weights: every method writes the
MatMulNBits format, GPTQ lowers the output error on correlated inputs, HQQ lowers its own
objective, and bad requests are refused."""

import numpy as np
import pytest

from edgedelta.errors import ConfigError
from edgedelta.export.config import INT8_ACTIVATION_TOLERANCE
from edgedelta.export.quant_methods import METHODS, quantize_weight
from edgedelta.export.quantize import quantize_blockwise


def _data(n=64, k=96, tokens=2048, seed=0):
    """W (N, K) with a few outliers; X (tokens, K) with correlated, unevenly scaled channels."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)).astype(np.float32)
    w[rng.random((n, k)) < 0.01] *= 6
    mix = rng.standard_normal((k, k)).astype(np.float32) / np.sqrt(k)
    x = (rng.standard_normal((tokens, k)) @ mix + 0.2 * rng.standard_normal((tokens, k))) * np.exp(rng.standard_normal(k))
    return w, x.astype(np.float32)


def _out_err(x, w, q):
    return np.linalg.norm(x @ (q.dequantize() - w).T) / np.linalg.norm(x @ w.T)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_output_error_below_rtn(bits, act_order):
    w, x = _data()
    h = x.T @ x
    rtn = _out_err(x, w, quantize_weight(w, bits, 32, "rtn"))
    gptq = _out_err(x, w, quantize_weight(w, bits, 32, "gptq", h, act_order=act_order))
    assert gptq < 0.9 * rtn, (gptq, rtn)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bits,k", [(4, 40), (8, 40), (4, 64)])
def test_every_method_writes_the_kernel_format(method, bits, k):
    """Same tensor shapes as RTN, codes in range, K padding decoding to exactly 0."""
    w, x = _data(24, k)
    q = quantize_weight(w, bits, 16, method, x.T @ x)
    ref = quantize_blockwise(w, bits, 16)
    assert q.packed.shape == ref.packed.shape and q.scales.shape == ref.scales.shape and q.zero_points.shape == ref.zero_points.shape
    assert q.packed.dtype == np.uint8 and q.zero_points.dtype == np.uint8 and np.all(q.scales > 0)
    from edgedelta.export.quantize import _unpack

    codes = _unpack(q.packed, bits).reshape(24, -1)  # (N, nb*bs)
    assert codes.max() < (1 << bits)
    if k % 16:  # the padding columns of the last block decode to 0
        pad = codes[:, k:].astype(np.float32)
        assert np.all((pad - _zp_last(q, bits)[:, None]) * q.scales.reshape(24, -1)[:, -1:] == 0)
    rel = np.linalg.norm(q.dequantize() - w) / np.linalg.norm(w)
    assert rel < (0.35 if bits == 4 else 0.03)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bits", [4, 8])
def test_symmetric_blocks_store_no_zero_points(method, bits):
    """Every method's symmetric codes: no zero points, decoded around 2^(bits-1); RTN within half
    a step; a zero weight exactly zero (GPTQ excepted); weight error within 1.5x the asymmetric
    codes' (a symmetric grid spends levels on the side of zero a block does not reach)."""
    w, x = _data(24, 40)
    w[:, 3] = 0.0
    q = quantize_weight(w, bits, 16, method, x.T @ x, symmetric=True)
    assert q.zero_points is None and q.packed.shape == quantize_blockwise(w, bits, 16).packed.shape
    deq = q.dequantize()
    assert method == "gptq" or np.all(deq[:, 3] == 0.0)  # GPTQ moves earlier columns' error into this one
    if method == "rtn":  # round to nearest on a grid that holds the block: within half a step
        step = q.scales.reshape(24, -1).repeat(16, axis=1)[:, :40]
        assert np.all(np.abs(deq - w) <= 0.5 * step + 1e-6)
    err = {s: np.linalg.norm(quantize_weight(w, bits, 16, method, x.T @ x, symmetric=s).dequantize() - w) for s in (False, True)}
    assert err[True] < 1.5 * err[False], err


def _zp_last(q, bits):
    from edgedelta.export.quantize import _unpack_zp

    nb = q.packed.shape[1]
    return _unpack_zp(q.zero_points, bits, q.n, nb)[:, -1].astype(np.float32)


def test_hqq_lowers_its_lp_objective():
    """HQQ keeps, per block, the iterate with the lowest Σ|w - ŵ|^0.7 (RTN's start included)."""
    w, _ = _data(128, 128)
    lp = {m: np.sum(np.abs(quantize_weight(w, 4, 32, m).dequantize() - w) ** 0.7) for m in ("rtn", "hqq")}
    assert lp["hqq"] < lp["rtn"]


def test_gptq_of_a_row_concatenation_equals_its_parts():
    """A fused q/k/v weight reads one input: quantizing the concatenation gives the parts."""
    w, x = _data(48, 64)
    h = x.T @ x
    whole = quantize_weight(w, 4, 32, "gptq", h).dequantize()
    parts = np.concatenate([quantize_weight(p, 4, 32, "gptq", h).dequantize() for p in (w[:16], w[16:40], w[40:])])
    np.testing.assert_allclose(whole, parts, atol=1e-5)


def test_gptq_tolerates_inputs_never_seen():
    w, x = _data(16, 64)
    x[:, 5] = 0.0  # a channel the calibration text never excited: H[5, 5] = 0
    q = quantize_weight(w, 4, 32, "gptq", x.T @ x)
    assert np.isfinite(q.dequantize()).all()


def test_bad_requests_are_refused():
    w, x = _data(8, 32)
    with pytest.raises(ConfigError, match="awq.*allowed: rtn, gptq, hqq"):
        quantize_weight(w, 4, 32, "awq")
    with pytest.raises(ConfigError, match="needs calibration statistics"):
        quantize_weight(w, 4, 32, "gptq")
    with pytest.raises(ConfigError, match="does not fit"):
        quantize_weight(w, 4, 32, "gptq", np.eye(16))


def test_inverse_cholesky_factor_matches_the_float64_textbook_path():
    """GPTQ's factor in float32 from the reversed Hessian equals the reference's three steps
    in float64 (Cholesky of H + λI, its inverse, the upper Cholesky of that) on a Hessian of
    correlated, unevenly scaled inputs with four outlier channels (100x) and one the text
    never excites."""
    import torch

    from edgedelta.export.quant_methods import GPTQ_DAMP, _inverse_cholesky

    _, x = _data(k=256, tokens=4096)
    x[:, 7] = 0.0
    x[:, :4] *= 100.0
    h = torch.from_numpy(x.T @ x).double()
    h[7, 7] = 1.0  # as gptq() sets a dead input
    damped = h + GPTQ_DAMP * h.diagonal().mean() * torch.eye(256, dtype=torch.float64)
    ref = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(damped)), upper=True)
    u = _inverse_cholesky(h.float())
    assert u.dtype == torch.float32 and torch.equal(u, torch.triu(u))
    err = (u.double() - ref).abs().max() / ref.abs().max()
    assert err < 1e-5, float(err)


@pytest.mark.parametrize("symmetric", [False, True])
def test_fitted_block_scales_lower_the_weighted_error_of_min_max(symmetric):
    """GPTQ's block parameters (fitted_params): per block, the searched range's error weighted
    by diag H is at most min/max's (zero points: min/max is the shrink 1.0 candidate), and in
    total clearly lower; an all-zero block decodes to zeros."""
    from edgedelta.export.quant_methods import fitted_params
    from edgedelta.export.quantize import minmax_params, pad_blocks

    w, x = _data(64, 96)
    w[:, 32:48] = 0.0  # one all-zero block per row
    blocks = pad_blocks(w, 16)  # (64, 6, 16)
    c = np.square(x).sum(0).reshape(6, 16)  # diag H per column
    qmax = 15

    def weighted_err(scale, zp):
        q = np.clip(np.round(blocks / scale[..., None]) + zp[..., None], 0, qmax)
        return (np.square((q - zp[..., None]) * scale[..., None] - blocks) * c).sum(-1), (q - zp[..., None]) * scale[..., None]

    fit, fit_deq = weighted_err(*fitted_params(blocks, 4, symmetric, c))
    ref, _ = weighted_err(*minmax_params(blocks, 4, symmetric))
    if not symmetric:
        assert np.all(fit <= ref * (1 + 1e-3)), (fit / ref).max()
    assert fit.sum() < 0.9 * ref.sum(), (fit.sum(), ref.sum())
    assert np.all(fit_deq[:, 2] == 0.0)


@pytest.mark.parametrize("accuracy_level", [0, 4])
def test_a_signed_symmetric_scale_uses_the_extra_level_and_the_kernel_reads_it(accuracy_level, tmp_path):
    """Symmetric codes span [-2^(bits-1), 2^(bits-1) - 1]: a block whose largest weight is
    positive gets a negative scale, so that weight lands on the wider side. MatMulNBits
    multiplies by the stored scale, so the kernel's output equals x·dequantize()ᵀ: exactly at
    accuracy level 0, within the int8 activation rounding at level 4 (a kernel that dropped the
    sign would be off by the size of the outputs in half of them)."""
    import onnxruntime as ort
    from onnx import TensorProto

    from edgedelta.export.graph import MS_DOMAIN, GraphBuilder

    w, x = _data(32, 64)
    w[0, :16] = np.linspace(-1, 3, 16)  # block (0, 0): the peak, 3, is positive
    q = quantize_weight(w, 4, 16, "gptq", x.T @ x, symmetric=True)
    scales = q.scales.reshape(32, -1)
    assert scales[0, 0] < 0 and (scales < 0).any() and (scales > 0).any()
    b = GraphBuilder("g", 21)
    xin = b.add_input("x", TensorProto.FLOAT, ["n", 64])
    b.initializer("w", q.packed)
    b.initializer("w.scales", q.scales)
    b.op("MatMulNBits", [xin, "w", "w.scales"], domain=MS_DOMAIN, outputs=["y"], K=64, N=32, bits=4, block_size=16,
         accuracy_level=accuracy_level)
    b.add_output("y", TensorProto.FLOAT, ["n", 32])
    b.save(tmp_path)
    got = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x[:3]})[0]
    ref = x[:3] @ q.dequantize().T
    if accuracy_level == 0:
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3)
    else:
        abs_tol, rel_tol = INT8_ACTIVATION_TOLERANCE
        assert np.abs(got - ref).max() <= abs_tol + rel_tol * np.abs(ref).max(), (np.abs(got - ref).max(), np.abs(ref).max())


@pytest.mark.parametrize("method", METHODS)
def test_float_zero_points_hold_q4_1_weights(method):
    """On weights that are Q4_1 blocks every method, given float zero points, lands on the
    blocks (error = the 8-bit offset table's rounding only), far below its integer-zero-point
    error; on ordinary weights its output error is no worse than with integer zero points."""
    from tests.export.test_export_quantize import _q4_1_weights

    rng = np.random.default_rng(5)
    w, _ = _q4_1_weights(rng, 64, 128)
    _, x = _data(k=128)
    h = x.T @ x
    fz = quantize_weight(w, 4, 32, method, h, float_zp=True)
    uint = quantize_weight(w, 4, 32, method, h)
    assert fz.zero_points is None and fz.offsets is not None
    assert _out_err(x, w, fz) < 0.2 * _out_err(x, w, uint), (_out_err(x, w, fz), _out_err(x, w, uint))
    w2, _ = _data(k=128, seed=1)
    assert _out_err(x, w2, quantize_weight(w2, 4, 32, method, h, float_zp=True)) <= 1.05 * _out_err(x, w2, quantize_weight(w2, 4, 32, method, h))


def test_float_zero_points_are_not_symmetric():
    w, _ = _data()
    with pytest.raises(ConfigError, match="float_zp"):
        quantize_weight(w, 4, 32, "rtn", symmetric=True, float_zp=True)
