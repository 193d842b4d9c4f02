"""Initial values for a sharing group: the shared base and each layer's low-rank delta.

For one projection of a group with original weights W_l (out, in):
  base   anchor: W_a of one layer a of the group (first, or the most influential): that layer is
                 exact and gets no delta, so the whole delta budget goes to the other layers
         mean:   mean_l W_l
         alternating: start from the mean, then alternate  Δ_l = rank-r fit of (W_l − base)
                 and base = argmin Σ_l ‖(W_l − Δ_l − base) S_l‖²  (covariance-weighted mean)
  delta  svd:    truncated SVD of R_l = W_l − base (weight-space error)
         asvd:   truncated SVD of R_l S_l, mapped back (output error on calibration inputs,
                 as ASVD / SVD-LLM): B = U_r √Σ_r,  A = √Σ_r V_rᵀ S_l⁻¹
Gates are fitted afterwards on real sub-layer outputs (sublayer_gates.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .calibration import WhiteningCache


@dataclass
class GroupInit:
    base: torch.Tensor  # (out, in)
    deltas: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: B (out, r), A (r, in)
    rel_errors: list[float]  # per layer: ‖(W − Ŵ) S‖ / ‖W S‖ (S = I for weight-space)
    alphas: list[float] | None = None  # per layer base scale α (None: plain W_shared + B·A)


@dataclass
class _Fit:
    alpha: float
    b: torch.Tensor  # (out, r)
    a: torch.Tensor  # (r, in)
    tail: float  # ‖(W − αbase − B·A)·S_fit‖², the energy the rank-r delta could not capture
    a_fit: torch.Tensor  # A·S_fit (r, in): reused to report the error without another product


def _top_svd(a: torch.Tensor, k: int, oversample: int = 16, power_iters: int = 4):
    """The top-k singular triplets of a (m, n). Exact SVD when k is a large part of the
    spectrum; otherwise a randomized range finder (Halko et al.) with a FIXED seed, so the
    same weights always give the same init (artifacts are byte-reproducible), at a fraction
    of a full SVD's cost: only (m·n·(k+p)) products."""
    m, n = a.shape
    if 3 * (k + oversample) >= min(m, n):
        u, sig, vh = torch.linalg.svd(a, full_matrices=False)
        return u[:, :k], sig[:k], vh[:k]
    g = torch.Generator().manual_seed(0)
    y = a @ torch.randn(n, k + oversample, generator=g, dtype=a.dtype).to(a.device)  # (m, k+p); drawn on the CPU: same draw on any device
    for _ in range(power_iters):  # sharpen the spectrum; re-orthogonalise for stability
        y = a @ (a.T @ torch.linalg.qr(y).Q)
    q = torch.linalg.qr(y).Q  # (m, k+p)
    ub, sig, vh = torch.linalg.svd(q.T @ a, full_matrices=False)  # (k+p, n): small
    return (q @ ub)[:, :k], sig[:k], vh[:k]


def _svd_fit(target: torch.Tensor, s: torch.Tensor | None, rank: int, alpha: float) -> _Fit:
    """Best rank-r delta for target = (W − α·base)·S_fit (out, in). Eckart–Young: the error
    is the energy outside the top-r singular values, ‖target‖² − Σ σ_i²."""
    u, sig, vh = _top_svd(target, rank)
    root = sig.sqrt()
    b = u * root  # (out, r)
    # Where a singular value is ~0 (a layer equal to the base), B's column is 0 but A's row
    # must not be: with both factors 0 the delta is a saddle point and distillation could
    # never move it (LoRA keeps A ≠ 0 for the same reason).
    floor = 1e-2 * float(root.max()) if float(root.max()) > 0 else 1e-2
    a_fit = torch.clamp(root, min=floor)[:, None] * vh  # (r, in), = A·S_fit on the captured directions
    a = torch.linalg.solve_triangular(s, a_fit, upper=False, left=False) if s is not None else a_fit  # A = a_fit · S⁻¹
    return _Fit(alpha, b, a, float(target.pow(2).sum() - sig.pow(2).sum()), a_fit)  # B·A unchanged: b is 0 where A was floored


def _fit_layer(ws: torch.Tensor, bs: torch.Tensor, s_fit: torch.Tensor | None, rank: int, scale_base: bool) -> _Fit:
    """Delta (and base scale α) for one layer. ws = W·S_fit, bs = base·S_fit, both (out, in).
    With scale_base the least-squares α is tried beside α = 1 and kept only if its delta
    leaves less error."""
    fit = _svd_fit(ws - bs, s_fit, rank, 1.0)
    if scale_base:
        alpha = float(torch.sum(ws * bs) / torch.sum(bs * bs).clamp_min(1e-30))
        scaled = _svd_fit(ws - alpha * bs, s_fit, rank, alpha)
        if scaled.tail < fit.tail:
            fit = scaled
    return fit


def init_group(weights: list[torch.Tensor], covs: list[torch.Tensor] | None, rank: int, base: str,
               init: str, iters: int = 3, damping: float = 0.01, whiten: WhiteningCache | None = None,
               scale_base: bool = False, anchor: int | None = None) -> GroupInit:
    """Compute base, deltas and base scales for one projection of one group. With `anchor`
    (a position in `weights`) the base is that layer's weight and its delta is empty (rank 0).
    Matrix products and SVDs run in float32 (the whitening factor is computed in float64):
    ample precision for an initialisation, and several times faster on a CPU."""
    ws = [w.detach().float() for w in weights]  # each (out, in)
    data_aware = init == "asvd"
    if (data_aware or base == "alternating") and covs is None:
        raise ValueError(f"init '{init}' / alternating base need calibration covariances")
    if (anchor is None) == (base in ("anchor", "first")):
        raise ValueError(f"base '{base}' and anchor {anchor} do not go together")
    whiten = whiten or WhiteningCache(damping)
    ss = [whiten(c) for c in covs] if covs is not None else [None] * len(ws)
    s_fit = ss if data_aware else [None] * len(ws)
    w_fit = [w @ s if s is not None else w for w, s in zip(ws, s_fit)]  # W·S_fit, fixed across iterations

    def fit(b0):
        b_fit = [b0 @ s if s is not None else b0 for s in s_fit]  # base·S_fit per layer
        fits = [_fit_layer(wf, bf, s, rank, scale_base) if k != anchor else _exact(wf)
                for k, (wf, bf, s) in enumerate(zip(w_fit, b_fit, s_fit))]
        return fits, b_fit

    b0 = ws[anchor].clone() if anchor is not None else torch.stack(ws).mean(0)
    fits, b_fit = fit(b0)
    if base == "alternating":
        # base = argmin Σ_l ‖(W_l − α_l·base − Δ_l) S_l‖²  ⇔  base · Σ α_l² C_l = Σ α_l (W_l − Δ_l) C_l
        cs = [whiten.damped(c) for c in covs]
        for _ in range(iters):
            if sum(f.alpha ** 2 for f in fits) < 1e-6:
                break  # no layer uses the base: nothing to refine
            lhs = sum(f.alpha ** 2 * c for f, c in zip(fits, cs))
            rhs = sum(f.alpha * (w - f.b @ f.a) @ c for f, w, c in zip(fits, ws, cs))
            b0 = torch.linalg.solve(lhs.double(), rhs.T.double()).T.float()  # lhs is symmetric
            fits, b_fit = fit(b0)

    # report errors in the output metric S when calibration data exists; with the data-aware
    # init the fit metric is that metric and every product is at hand
    errs = []
    for w, wf, bf, f, s in zip(ws, w_fit, b_fit, fits, ss):
        if data_aware:
            ref, est = wf, f.alpha * bf + f.b @ f.a_fit
        else:
            approx = f.alpha * b0 + f.b @ f.a
            ref, est = (w @ s, approx @ s) if s is not None else (w, approx)
        errs.append(float((ref - est).norm() / ref.norm().clamp_min(1e-30)))
    return GroupInit(b0.double(), [(f.b.double(), f.a.double()) for f in fits], errs,
                     [f.alpha for f in fits] if scale_base else None)


def _exact(wf: torch.Tensor) -> _Fit:
    """The anchor: W = base exactly, α = 1, an empty (rank-0) delta."""
    out_f, in_f = wf.shape
    return _Fit(1.0, wf.new_zeros(out_f, 0), wf.new_zeros(0, in_f), 0.0, wf.new_zeros(0, in_f))
