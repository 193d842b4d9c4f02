"""Calibration: the text compress() fits on (one explicit object, `Calibration`) and the
statistics measured on it: the input covariance C = Σ x xᵀ of every linear projection,
gathered with forward pre-hooks while the original model reads calibration text.
Data-aware initialisation minimises ‖(W − Ŵ) X‖ = ‖(W − Ŵ) S‖ with C = S Sᵀ."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..data.text import calibration_batches
from ..errors import ConfigError
from ..models.adapters import ModelAdapter
from .config import CompressConfig


@dataclass
class Calibration:
    """Calibration text and what compress() measures on it. A caller comparing several configs
    on one model passes the measurements once (covs, influence); None fields are measured when
    a config needs them."""

    ids: torch.Tensor | None  # (n, T) token ids; None when the config needs no calibration text
    covs: dict[tuple[int, str], torch.Tensor] | None = None  # input_covariances over every layer of the model
    influence: list[float] | None = None  # block influence of each of the model's layers on ids

    @classmethod
    def draw(cls, cfg: CompressConfig, tokenizer, calib_ids: torch.Tensor | None = None) -> "Calibration":
        """cfg.calib_samples rows of cfg.calib_text (cfg.calib_seq_len tokens each), or `calib_ids`."""
        if calib_ids is not None:
            return cls(calib_ids)
        if tokenizer is None:
            raise ConfigError(f"init '{cfg.init}' / gates / anchor base / budget planning / drop_layers need calibration text: "
                              "pass a tokenizer or calib_ids")
        return cls(calibration_batches(tokenizer, cfg.calib_samples, cfg.calib_seq_len, cfg.seed, cfg.calib_text))


@torch.no_grad()
def input_covariances(model, adapter: ModelAdapter, layer_indices, projections, calib_ids: torch.Tensor,
                      batch_size: int = 4, progress: bool = False) -> dict[tuple[int, str], torch.Tensor]:
    """{(layer, proj): C (in, in) float64} over all tokens of calib_ids (n, seq_len).
    Projections that read the same input (q/k/v, gate/up) get the same tensor object, and it
    is gathered once."""
    layers = adapter.decoder_layers(model)
    covs: dict[tuple[int, str], torch.Tensor] = {}
    hooks = []
    readers = input_readers(adapter, projections)

    def make_hook(key):
        def hook(_module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()  # (tokens, in)
            c = (x.T @ x).double()
            covs[key] = covs[key] + c if key in covs else c
        return hook

    for li in layer_indices:
        for proj in readers:
            hooks.append(adapter.get_linear(layers[li], proj).register_forward_pre_hook(make_hook((li, proj))))
    try:
        model.eval()
        device = next(model.parameters()).device
        for s in tqdm(range(0, calib_ids.shape[0], batch_size), desc="calibration", disable=not progress, leave=False):
            model(input_ids=calib_ids[s : s + batch_size].to(device))
    finally:
        for h in hooks:
            h.remove()
    for li in layer_indices:
        for proj in projections:
            covs[(li, proj)] = covs[(li, readers_of(adapter, proj, readers))]
    return covs


def input_readers(adapter: ModelAdapter, projections) -> list[str]:
    """One projection per distinct input: the first of each sub-layer's input readers
    (everything but o/down reads the normed sub-layer input) plus o and down."""
    return sorted({readers_of(adapter, p) for p in projections}, key=list(adapter.projections).index)


def readers_of(adapter: ModelAdapter, proj: str, _=None) -> str:
    """The projection whose input `proj` shares (itself for o/down/fused ones)."""
    if proj in ("o", "down") or proj in adapter.fused:
        return proj
    kind = adapter.kinds[proj]
    return next(p for p in adapter.projections if adapter.kinds[p] == kind and p not in ("o", "down"))


class WhiteningCache:
    """Whitening factors S (float32) and damped covariances S·Sᵀ computed once per distinct
    covariance tensor (q/k/v share one; each layer appears in two candidate groups)."""

    def __init__(self, damping: float):
        self.damping, self._s = damping, {}

    def _entry(self, cov: torch.Tensor) -> list:
        key = id(cov)
        if key not in self._s:
            self._s[key] = [cov, whitening_factor(cov, self.damping).float(), None]  # keep cov alive: ids stay unique
        return self._s[key]

    def __call__(self, cov: torch.Tensor) -> torch.Tensor:
        return self._entry(cov)[1]

    def damped(self, cov: torch.Tensor) -> torch.Tensor:
        """C + λI (float32), = S·Sᵀ."""
        e = self._entry(cov)
        if e[2] is None:
            e[2] = e[1] @ e[1].T
        return e[2]


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
