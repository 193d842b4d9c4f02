"""Calibration statistics: the input covariance C = Σ x xᵀ of every linear projection,
gathered with forward pre-hooks while the original model reads calibration text.
Data-aware initialisation minimises ‖(W − Ŵ) X‖ = ‖(W − Ŵ) S‖ with C = S Sᵀ."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..models.adapters import ModelAdapter


@torch.no_grad()
def input_covariances(model, adapter: ModelAdapter, layer_indices, projections, calib_ids: torch.Tensor,
                      batch_size: int = 4, progress: bool = False) -> dict[tuple[int, str], torch.Tensor]:
    """{(layer, proj): C (in, in) float64} over all tokens of calib_ids (n, seq_len)."""
    layers = adapter.decoder_layers(model)
    covs: dict[tuple[int, str], torch.Tensor] = {}
    hooks = []

    def make_hook(key):
        def hook(_module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()  # (tokens, in)
            c = (x.T @ x).double()
            covs[key] = covs[key] + c if key in covs else c
        return hook

    for li in layer_indices:
        for proj in projections:
            hooks.append(adapter.get_linear(layers[li], proj).register_forward_pre_hook(make_hook((li, proj))))
    try:
        model.eval()
        device = next(model.parameters()).device
        for s in tqdm(range(0, calib_ids.shape[0], batch_size), desc="calibration", disable=not progress, leave=False):
            model(input_ids=calib_ids[s : s + batch_size].to(device))
    finally:
        for h in hooks:
            h.remove()
    return covs


def whitening_factor(cov: torch.Tensor, damping: float) -> torch.Tensor:
    """Lower-triangular S with S Sᵀ = C + λI, λ = damping · mean(diag C) (keeps S invertible
    for directions the calibration text never excited)."""
    c = cov.double()
    lam = damping * c.diagonal().mean().clamp_min(1e-12)
    eye = torch.eye(c.shape[0], dtype=c.dtype, device=c.device)
    for attempt in range(6):  # grow damping if C is numerically indefinite
        s, info = torch.linalg.cholesky_ex(c + lam * (10**attempt) * eye)
        if info.item() == 0:
            return s
    raise ValueError("input covariance is not positive definite even with heavy damping")
