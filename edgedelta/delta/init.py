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


def init_group(weights: list[torch.Tensor], covs: list[torch.Tensor] | None, rank: int, base: str,
               init: str, gates: bool, iters: int = 3, damping: float = 0.01,
               whiten: WhiteningCache | None = None) -> GroupInit:
    """Compute base, deltas (and gates) for one projection of one group (float64, SVD in float32)."""
    ws = [w.detach().double() for w in weights]
    data_aware = init == "asvd"
    if (data_aware or gates or base == "alternating") and covs is None:
        raise ValueError(f"init '{init}' / gates / alternating base need calibration covariances")
    whiten = whiten or WhiteningCache(damping)
    ss = [whiten(c) for c in covs] if covs is not None else None
    s_for_fit = ss if data_aware else [None] * len(ws)

    if base == "first":
        b0 = ws[0].clone()
    else:
        b0 = torch.stack(ws).mean(0)
    deltas = [_low_rank(w - b0, s, rank) for w, s in zip(ws, s_for_fit)]
    if base == "alternating":
        # C_l + λI = S_l S_lᵀ; the weighted mean solves base · Σ C_l = Σ (W_l − Δ_l) C_l
        cs = [s @ s.T for s in ss]
        csum = sum(cs)
        for _ in range(iters):
            rhs = sum((w - bb @ aa) @ c for w, (bb, aa), c in zip(ws, deltas, cs))
            b0 = torch.linalg.solve(csum, rhs.T).T  # csum is symmetric
            deltas = [_low_rank(w - b0, s, rank) for w, s in zip(ws, s_for_fit)]

    approx = [b0 + bb @ aa for bb, aa in deltas]
    metric = ss if ss is not None else [None] * len(ws)
    errs, gate_vals = [], []
    for w, wh, s in zip(ws, approx, metric):
        ref, est = (w @ s, wh @ s) if s is not None else (w, wh)
        errs.append(((ref - est).norm() / ref.norm().clamp_min(1e-30)).item())
        if gates:
            gate_vals.append((torch.sum(ref * est) / torch.sum(est * est).clamp_min(1e-30)).item())
    return GroupInit(b0, deltas, gate_vals if gates else None, errs)
