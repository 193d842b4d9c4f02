"""Initial values for a sharing group: the shared base and each layer's low-rank delta.

For one projection of a group with original weights W_l (out, in):
  base   first:  W_first
         mean:   mean_l W_l
         alternating: start from the mean, then alternate  Δ_l = rank-r fit of (W_l − base)
                 and base = argmin Σ_l ‖(W_l − Δ_l − base) S_l‖²  (covariance-weighted mean)
  delta  svd:    truncated SVD of R_l = W_l − base (weight-space error)
         asvd:   truncated SVD of R_l S_l, mapped back (output error on calibration inputs,
                 as ASVD / SVD-LLM): B = U_r √Σ_r,  A = √Σ_r V_rᵀ S_l⁻¹
  gate   g_l = ⟨W_l S, Ŵ_l S⟩ / ‖Ŵ_l S‖²  — the least-squares output scale of Ŵ_l = base + B A.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .calibration import WhiteningCache


@dataclass
class GroupInit:
    base: torch.Tensor  # (out, in)
    deltas: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: B (out, r), A (r, in)
    gates: list[float] | None
    rel_errors: list[float]  # per layer: ‖(W − Ŵ) S‖ / ‖W S‖ (S = I for weight-space)
    alphas: list[float] | None = None  # per layer base scale α (None: plain W_shared + B·A)


def _low_rank(resid: torch.Tensor, s: torch.Tensor | None, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-r (B, A) for resid (out, in), in the S-weighted norm if s is given."""
    out_f, in_f = resid.shape
    if rank == 0:
        return resid.new_zeros(out_f, 0), resid.new_zeros(0, in_f)
    target = resid @ s if s is not None else resid
    # float32 SVD: ~4x faster than float64 and far more precise than the approximation needs
    u, sig, vh = torch.linalg.svd(target.float(), full_matrices=False)
    root = sig[:rank].sqrt().double()
    b = u[:, :rank].double() * root  # (out, r)
    a = root[:, None] * vh[:rank].double()  # (r, in)
    if s is not None:
        a = torch.linalg.solve_triangular(s, a, upper=False, left=False)  # a · S⁻¹
    return b, a


def _err(w, approx, s) -> float:
    ref, est = (w @ s, approx @ s) if s is not None else (w, approx)
    return ((ref - est).norm() / ref.norm().clamp_min(1e-30)).item()


def _fit_layer(w, base, s_fit, s_metric, rank, scale_base: bool):
    """(α, (B, A)) for one layer given the base. With scale_base, α is the least-squares
    scale of the base in the output metric, kept only if it beats α = 1 after the delta fit."""
    delta1 = _low_rank(w - base, s_fit, rank)
    if not scale_base:
        return 1.0, delta1
    wb = (w @ s_metric, base @ s_metric) if s_metric is not None else (w, base)
    alpha = (torch.sum(wb[0] * wb[1]) / torch.sum(wb[1] * wb[1]).clamp_min(1e-30)).item()
    delta_a = _low_rank(w - alpha * base, s_fit, rank)
    e1 = _err(w, base + delta1[0] @ delta1[1], s_metric)
    ea = _err(w, alpha * base + delta_a[0] @ delta_a[1], s_metric)
    return (alpha, delta_a) if ea < e1 else (1.0, delta1)


def init_group(weights: list[torch.Tensor], covs: list[torch.Tensor] | None, rank: int, base: str,
               init: str, gates: bool, iters: int = 3, damping: float = 0.01,
               whiten: WhiteningCache | None = None, scale_base: bool = False) -> GroupInit:
    """Compute base, deltas, base scales (and gates) for one projection of one group
    (float64, SVD in float32)."""
    ws = [w.detach().double() for w in weights]
    data_aware = init == "asvd"
    if (data_aware or gates or base == "alternating") and covs is None:
        raise ValueError(f"init '{init}' / gates / alternating base need calibration covariances")
    whiten = whiten or WhiteningCache(damping)
    ss = [whiten(c) for c in covs] if covs is not None else [None] * len(ws)
    s_fit = ss if data_aware else [None] * len(ws)

    def fit(b0):
        fits = [_fit_layer(w, b0, sf, sm, rank, scale_base) for w, sf, sm in zip(ws, s_fit, ss)]
        return [a for a, _ in fits], [d for _, d in fits]

    b0 = ws[0].clone() if base == "first" else torch.stack(ws).mean(0)
    alphas, deltas = fit(b0)
    if base == "alternating":
        # base = argmin Σ_l ‖(W_l − α_l·base − Δ_l) S_l‖²  ⇔  base · Σ α_l² C_l = Σ α_l (W_l − Δ_l) C_l
        cs = [s @ s.T for s in ss]
        for _ in range(iters):
            lhs = sum(a * a * c for a, c in zip(alphas, cs))
            if sum(a * a for a in alphas) < 1e-6:
                break  # no layer uses the base: nothing to refine
            rhs = sum(a * (w - bb @ aa) @ c for a, w, (bb, aa), c in zip(alphas, ws, deltas, cs))
            b0 = torch.linalg.solve(lhs, rhs.T).T  # lhs is symmetric
            alphas, deltas = fit(b0)

    approx = [a * b0 + bb @ aa for a, (bb, aa) in zip(alphas, deltas)]
    errs = [_err(w, wh, s) for w, wh, s in zip(ws, approx, ss)]
    gate_vals = None
    if gates:
        gate_vals = []
        for w, wh, s in zip(ws, approx, ss):
            ref, est = (w @ s, wh @ s) if s is not None else (w, wh)
            gate_vals.append((torch.sum(ref * est) / torch.sum(est * est).clamp_min(1e-30)).item())
    return GroupInit(b0, deltas, gate_vals, errs, alphas if scale_base else None)
