"""How a weight's MatMulNBits codes are chosen. Every method writes the same format
(quantize.py: unsigned codes, one float scale and one integer zero point per block of
`block_size` along K, the zero point fixed at 2^(bits-1) and not stored when symmetric), so
the kernel and the graph do not depend on the method:

  rtn   round to nearest from each block's min/max (no data)
  gptq  GPTQ (Frantar et al. 2022): quantize K column by column and spread each column's
        rounding error over the columns not yet quantized, weighted by the inverse of the
        input Hessian H = Σ xᵀx from calibration activations, so the error in x·Wᵀ (what the
        layer outputs) is minimised rather than the error in W. Lazy batch updates: the
        error of a batch of columns reaches the rest of W in one matmul. Each block's scale
        (and zero point) is searched over shrunk ranges for the least diag(H)-weighted
        error (fitted_params).
  hqq   half-quadratic quantization (Badri & Shaji 2023, no data): alternates a sparse
        outlier estimate (an lp-norm shrinkage, p < 1) with a least-squares fit of each
        block's scale and zero point, keeping the zero point an integer (MatMulNBits reads
        uint8 zero points; symmetric: the scale alone)

float_zp: every method can also give float zero points (quantize.py: symmetric codes plus an
offset table), which hold a GGUF's Q4_1 blocks exactly: rtn from each block's own min/max,
gptq's fitted ranges unrounded, hqq's least-squares zero left unrounded.

Quantization is per output row and per block along K, so quantizing a row-concatenation of
weights (a fused q/k/v) equals concatenating their quantizations, with each part's Hessian
equal when they read the same input."""

from __future__ import annotations

import numpy as np
import torch

from edgedelta.errors import ConfigError

from .config import QUANT_METHODS as METHODS
from .quantize import QuantizedWeight, from_codes, minmax_params, pad_blocks, quantize_blockwise

DATA_METHODS = ("gptq",)  # need calibration statistics (an input Hessian per weight)
DATA_FREE_FALLBACK = "rtn"  # for a weight no calibration input reaches
# GPTQ visits columns by decreasing H diagonal (static groups): output error 0.63x RTN's vs
# 0.80x in natural order on random int4 weights with correlated inputs; the SmolLM2-135M
# comparison is a row of bench/quant_quality.py
GPTQ_ACT_ORDER = True
GPTQ_DAMP = 0.01  # H + λI with λ = 1% of mean(diag H), as in the GPTQ paper
GPTQ_BATCH = 128  # columns per lazy batch update
HQQ_ITERS, HQQ_P, HQQ_BETA, HQQ_KAPPA = 20, 0.7, 10.0, 1.01  # the HQQ paper's settings
# GPTQ's block scales: the shrink of each block's range (1.0 = min/max) with the least
# squared error weighted by the input Hessian's diagonal, searched over this grid
# (fitted_params). Symmetric blocks use a signed scale, so the largest-magnitude weight lands
# on the code 0 = -2^(bits-1) whichever its sign and all 2^bits levels are used.
FIT_SHRINK = tuple(1.0 - 0.02 * i for i in range(16))  # 1.00 .. 0.70
FIT_ROWS = 256  # rows per chunk: the search's two (256, K) temporaries stay in cache over its 16 passes


def quantize_weight(w: np.ndarray, bits: int, block_size: int, method: str = "rtn", stats: np.ndarray | None = None,
                    act_order: bool = GPTQ_ACT_ORDER, symmetric: bool = False, float_zp: bool = False) -> QuantizedWeight:
    """w (N, K) float32 → MatMulNBits tensors. `stats` is the input Hessian H (K, K) = Σ xᵀx
    over calibration tokens (required by gptq, ignored by rtn/hqq). symmetric: every zero
    point 2^(bits-1), none stored. float_zp: float zero points (the offset table)."""
    if symmetric and float_zp:
        raise ConfigError("float zero points are asymmetric blocks: symmetric and float_zp exclude each other")
    if method not in METHODS:
        raise ConfigError(f"quantization method '{method}' is not supported; allowed: {', '.join(METHODS)}")
    w = np.asarray(w, np.float32)
    if method == "rtn":
        return quantize_blockwise(w, bits, block_size, symmetric, float_zp)
    if method == "hqq":
        return hqq(w, bits, block_size, symmetric, float_zp)
    if stats is None:
        raise ConfigError(f"quantization method '{method}' needs calibration statistics (the input Hessian of each weight)")
    if stats.shape != (w.shape[1], w.shape[1]):
        raise ConfigError(f"input Hessian of shape {tuple(stats.shape)} does not fit a weight with K = {w.shape[1]}")
    return gptq(w, stats, bits, block_size, act_order=act_order, symmetric=symmetric, float_zp=float_zp)


@torch.no_grad()
def fitted_params(blocks: np.ndarray, bits: int, symmetric: bool = False,
                  col_weight: np.ndarray | None = None, float_zp: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-block scale (N, nb) float32 and integer zero point (N, nb) uint8 (float_zp: float32,
    the range shrunk about its own min/max's zero point, as for integers) of (N, nb, bs)
    blocks, each the candidate with the least Σ_j c_j·(w_j − ŵ_j)² over its block, where c
    (nb, bs) is col_weight (GPTQ passes diag H: the output error of a column's rounding
    under a diagonal Hessian) or 1. Candidates shrink the block's range by each factor in
    FIT_SHRINK: clipping a few outliers buys a finer grid for the rest.

    Zero points: the range [f·lo, f·hi] of min/max's [lo, hi] (minmax_params; 0 stays
    exact), whose zero point is min/max's for every f. Symmetric: scale = f·m / −2^(bits−1),
    m the block's weight of largest magnitude with its sign; MatMulNBits multiplies by the
    scale as stored, so a negative scale is exact (tests/export/test_quant_methods.py runs
    the kernel on one)."""
    n, nb, bs = blocks.shape
    qmax, mid = (1 << bits) - 1, 1 << (bits - 1)
    c = torch.ones(nb, bs) if col_weight is None else torch.as_tensor(np.asarray(col_weight, np.float32)).reshape(nb, bs)
    scale_out, zp_out = np.empty((n, nb), np.float32), np.empty((n, nb), np.float32 if float_zp else np.uint8)
    for r0 in range(0, n, FIT_ROWS):
        b = torch.from_numpy(np.ascontiguousarray(blocks[r0 : r0 + FIT_ROWS]))  # (n', nb, bs)
        if symmetric:
            peak = b.gather(-1, b.abs().argmax(-1, keepdim=True))[..., 0]  # (n', nb) signed
            base, z = torch.where(peak == 0, 1.0, peak / -mid), None  # an all-zero block: exact with any scale
        else:  # shrinking [lo, hi] by f scales the step by f and keeps round(−lo/step)
            s0, z0 = minmax_params(b.numpy(), bits, float_zp=float_zp)  # (n', nb) each
            base, z = torch.from_numpy(s0), torch.from_numpy(z0.astype(np.float32))
        best_err = torch.full(b.shape[:2], float("inf"))
        best_s = base.clone()
        x, d = torch.empty_like(b), torch.empty_like(b)
        for f in FIT_SHRINK:
            s = base * f
            # error in units of the step: (q - z) - w/s with q - z = clamp(round(w/s), -z, qmax - z)
            torch.div(b, s[..., None], out=x)
            if symmetric:
                torch.round(x, out=d).clamp_(-mid, mid - 1)
            elif float_zp:  # q − z with q = clamp(round(w/s + z), 0, qmax)
                torch.add(x, z[..., None], out=d).round_().clamp_(0, qmax).sub_(z[..., None])
            else:
                torch.round(x, out=d)
                torch.clamp(d, min=-z[..., None], max=(qmax - z)[..., None], out=d)
            err = d.sub_(x).square_().mul_(c).sum(-1).mul_(s * s)  # (n', nb)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_s = torch.where(better, s, best_s)
        scale_out[r0 : r0 + FIT_ROWS] = best_s.numpy()
        zp_out[r0 : r0 + FIT_ROWS] = mid if symmetric else z.numpy().astype(zp_out.dtype)
    return scale_out, zp_out


def _inverse_cholesky(h: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor U of H⁻¹ (K, K) float32 (UᵀU = H⁻¹), damped until H is positive
    definite. With J the reversal permutation and J·H·J = M·Mᵀ (M lower), H = (JMJ)(JMJ)ᵀ with
    JMJ upper, so U = (JMJ)⁻¹ = J·M⁻¹·J: one factorisation and one triangular inverse, half
    the work of factorising H, inverting and factorising H⁻¹. In float32, as GPTQ's reference
    does it: λ = 1% of mean(diag H) bounds the conditioning, and the factor agrees with
    float64's to 1e-5 of its largest entry (tests/export/test_quant_methods.py).

    The triangular inverse is LAPACK's trtri (K³/3 flops) rather than a triangular solve
    against the identity (K³): for Qwen2.5-1.5B's K = 8960 down projection 1.9 s instead of
    3.2 s on 2 cores, of 4.6 s for the whole factor."""
    from scipy.linalg.lapack import strtri

    h = h.float()
    lam = GPTQ_DAMP * h.diagonal().mean().clamp_min(1e-12)
    eye = torch.eye(h.shape[0], dtype=h.dtype)
    flipped = h.flip(0, 1)
    for attempt in range(6):  # raise the damping if H is numerically indefinite
        low, info = torch.linalg.cholesky_ex(flipped + lam * (10**attempt) * eye)
        if info.item() == 0:
            inv, bad = strtri(low.numpy(), lower=1, overwrite_c=1)  # M⁻¹, lower
            if bad == 0:
                return torch.tril(torch.from_numpy(inv)).flip(0, 1)
    raise ValueError("input Hessian is not positive definite even with heavy damping")


@torch.no_grad()
def gptq(w: np.ndarray, h: np.ndarray, bits: int, block_size: int, act_order: bool = False,
         symmetric: bool = False, float_zp: bool = False) -> QuantizedWeight:
    """GPTQ with per-block (group) scales. Without act order a block's scale and zero point
    come from its columns as they stand when the block is reached (already carrying the error
    of earlier columns). With act order columns go by decreasing H diagonal and each block's
    parameters are fixed up front from the original weights (static groups), so the stored
    blocks stay contiguous along K as MatMulNBits needs.

    Works on Wᵀ (K, N): a column of W is a contiguous row, and spreading its error over the
    batch's later columns is one in-place rank-1 update (addr_), with no (N, batch) temporary
    per column: 2.5x faster for a (17920, 1536) gate/up than column slices of W."""
    n, k = w.shape
    qmax = (1 << bits) - 1
    H = torch.as_tensor(np.asarray(h), dtype=torch.float32).clone()  # (K, K)
    dead = H.diagonal() == 0  # inputs the calibration text never excited: any value is exact
    H[dead, dead] = 1.0
    Wt = torch.from_numpy(np.ascontiguousarray(w.T))  # (K, N): row j = column j of W
    Wt[dead] = 0.0
    nb = -(-k // block_size)
    St = torch.empty(nb, n)  # (nb, N) scales, a block's as one contiguous row
    Zt = torch.empty(nb, n)  # (nb, N) zero points (integers held as float, unless float_zp)
    perm = torch.argsort(H.diagonal(), descending=True) if act_order else torch.arange(k)
    diag = np.zeros(nb * block_size, np.float32)
    diag[:k] = H.diagonal().numpy()  # (nb·bs,) the K padding weighs nothing
    diag = diag.reshape(nb, block_size)
    if act_order:
        s0, z0 = fitted_params(pad_blocks(Wt.T.numpy(), block_size), bits, symmetric, diag, float_zp)  # (N, nb) each
        St[:], Zt[:] = torch.from_numpy(s0.T), torch.from_numpy(z0.T.astype(np.float32))
        Wt, H = Wt[perm].contiguous(), H[perm][:, perm]
    hinv = _inverse_cholesky(H)  # (K, K) upper
    Qt = torch.empty(k, n)  # (K, N) codes in the visiting order
    batch = max(GPTQ_BATCH, block_size)  # a multiple of block_size: a block never straddles two batches
    x_s, q, err = torch.empty(n), torch.empty(n), torch.empty(n)
    for i1 in range(0, k, batch):
        i2 = min(i1 + batch, k)
        W1, E1, Hi = Wt[i1:i2], torch.empty(i2 - i1, n), hinv[i1:i2, i1:i2]  # W1: a view, updated in place
        for i in range(i2 - i1):
            col = i1 + i
            g = int(perm[col]) // block_size
            if not act_order and col % block_size == 0:  # a new block: parameters from its current columns
                blk = W1[i : i + block_size].T.numpy()  # (N, block)
                s_, z_ = fitted_params(pad_blocks(blk, block_size), bits, symmetric, diag[g : g + 1], float_zp)
                St[g], Zt[g] = torch.from_numpy(s_[:, 0]), torch.from_numpy(z_[:, 0].astype(np.float32))
            x, s, z = W1[i], St[g], Zt[g]
            torch.div(x, s, out=x_s)
            if float_zp:
                torch.add(x_s, z, out=q).round_().clamp_(0, qmax)
            else:
                torch.round(x_s, out=q).add_(z).clamp_(0, qmax)
            Qt[col] = q
            # err = (x - (q - z)·s) / Hinv[i, i]
            torch.sub(q, z, out=err).mul_(s).neg_().add_(x).div_(Hi[i, i])
            if i + 1 < i2 - i1:  # spread over this batch's later columns: W1[j] -= Hinv[i, j]·err
                W1[i + 1 :].addr_(Hi[i, i + 1 :], err, alpha=-1.0)
            E1[i] = err
        if i2 < k:  # the batch's error reaches the rest in one update
            Wt[i2:].addmm_(hinv[i1:i2, i2:].T, E1, alpha=-1.0)
    if act_order:
        Qt = Qt[torch.argsort(perm)]
    codes = np.zeros((n, nb * block_size), np.uint8)
    codes[:, :k] = Qt.T.numpy().astype(np.uint8)
    codes = codes.reshape(n, nb, block_size)
    Z = Zt.T.numpy().astype(np.float32 if float_zp else np.uint8)  # (N, nb)
    # the K padding must decode to 0 (as near as a float zero point allows): its code is the block's zero point
    if k % block_size:
        codes[:, -1, k % block_size:] = np.clip(np.round(Z[:, -1]), 0, qmax)[:, None]
    return from_codes(codes, St.T.numpy(), None if symmetric else Z, bits, block_size, k)


def _shrink(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """Generalised soft threshold, the proximal step of |x|^p (p < 1): small residuals go to
    zero (they are noise the fit should cover), large ones (outliers) are kept as they are."""
    return torch.sign(x) * torch.relu(x.abs() - (1.0 / beta) * x.abs().clamp_min(1e-8).pow(p - 1))


@torch.no_grad()
def hqq(w: np.ndarray, bits: int, block_size: int, symmetric: bool = False, float_zp: bool = False) -> QuantizedWeight:
    """HQQ on (N, nb, bs) blocks, all blocks at once. Each iteration: codes by rounding with
    the current (scale, zero); outliers E = shrink(W − dequant); then the (scale, zero) that fit
    W − E best in least squares, the zero rounded to an integer and the scale refitted for
    it (symmetric: the zero stays 2^(bits-1), only the scale is fitted). Keeps, per block, the
    iterate with the lowest lp error (the RTN start included)."""
    k = w.shape[1]
    qmax = (1 << bits) - 1
    blocks = torch.from_numpy(pad_blocks(w, block_size))  # (N, nb, bs)
    s0, z0 = minmax_params(blocks.numpy(), bits, symmetric, float_zp)
    s, z = torch.from_numpy(s0)[..., None], torch.from_numpy(z0.astype(np.float32))[..., None]  # (N, nb, 1)

    def codes(s, z):
        if float_zp:
            return torch.clamp(torch.round(blocks / s + z), 0, qmax)
        return torch.clamp(torch.round(blocks / s) + z, 0, qmax)

    def lp_error(q, s, z):  # (N, nb)
        return (blocks - (q - z) * s).abs().pow(HQQ_P).sum(-1)

    best_q = codes(s, z)
    best_s, best_z, best_err = s.clone(), z.clone(), lp_error(best_q, s, z)
    beta = HQQ_BETA
    for _ in range(HQQ_ITERS):
        q = codes(s, z)
        e = _shrink(blocks - (q - z) * s, beta, HQQ_P)
        t = blocks - e  # the part of W the codes should represent
        # least squares t ≈ a·q + b per block: a = scale, b = −scale·zero
        qm, tm = q.mean(-1, keepdim=True), t.mean(-1, keepdim=True)
        var = ((q - qm) ** 2).sum(-1, keepdim=True)
        a = torch.where(var > 0, ((q - qm) * (t - tm)).sum(-1, keepdim=True) / var.clamp_min(1e-12), s)
        a = torch.where(a.abs() > 1e-12, a, s)
        if float_zp:
            z = -(tm - a * qm) / a
        elif not symmetric:
            z = torch.clamp(torch.round(-(tm - a * qm) / a), 0, qmax)
        qz = q - z
        den = (qz * qz).sum(-1, keepdim=True)
        s = torch.where(den > 0, (qz * t).sum(-1, keepdim=True) / den.clamp_min(1e-12), a)
        s = torch.where(s > 1e-12, s, best_s)  # a scale must stay positive
        q = codes(s, z)
        err = lp_error(q, s, z)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_q = torch.where(better[..., None], q, best_q)
        best_s = torch.where(better[..., None], s, best_s)
        best_z = torch.where(better[..., None], z, best_z)
        beta *= HQQ_KAPPA
    if k % block_size:  # the K padding decodes to exactly 0, as with RTN
        best_q[:, -1, k % block_size:] = best_z[:, -1].round().clamp(0, qmax)
    zp = None if symmetric else best_z[..., 0].numpy().astype(np.float32 if float_zp else np.uint8)
    return from_codes(best_q.numpy().astype(np.uint8), best_s[..., 0].numpy(), zp, bits, block_size, k)
