"""SliceGPT (Ashkboos et al., 2024, arXiv 2401.15024): rotate the residual stream into the
principal-component basis of its calibration hidden states, then delete its least-energetic
dimensions, so every projection reading or writing the residual stream shrinks.

This version uses ONE global rotation Q (hidden, hidden) for the whole decoder stack (the
paper uses one per layer plus a shortcut rotation) and keeps the embedding, the final norm and
the (tied) lm_head in the original basis: a tied head is ~20% of a small model, and untying it
to rotate it would cost more than the whole budget. Two small maps bridge the bases:

    embed_tokens:  ids -> embed(ids) · Q_d'           (…, hidden) -> (…, d')
    final norm:    h   -> norm(h · Q_d'ᵀ)              (…, d')     -> (…, hidden)

with Q_d' = Q[:, :d'] (hidden, d') ONE Parameter registered in both (counted once). Inside the
stack every RMSNorm's weight γ is fused into the projections that read it, then

    readers (q, k, v, gate, up, fused qkv / gate_up):  W (out, hidden) -> W·diag(γ)·Q_d'   (out, d')
    writers (o, down):                                 W (hidden, in)  -> Q_d'ᵀ·W          (d', in)
                                                       b (hidden,)     -> Q_d'ᵀ·b          (d',)

With d' = hidden this is exactly the original function (Q orthogonal, RMS invariant under
rotation); with d' < hidden it drops the residual directions with the least calibration energy.

Budget: unique parameters are linear in d' (each residual dimension costs the reader rows, the
writer columns, two norm entries per layer and one row of Q_d'); d' steps in multiples of 8,
the one nearest the target is chosen (SmolLM2-135M: one step = 1.48M parameters, 1.1%)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..delta.accounting import count_parameters
from ..errors import ConfigError
from ..models.adapters import ModelAdapter, adapter_for
from ..models.surgery import copy_model
from .common import BaselineResult, budget_report, resolve_target

_WRITERS = ("o", "down")
_READERS_ATTN = ("q", "k", "v", "qkv")  # read the input_layernorm output
_READERS_MLP = ("gate", "up", "gate_up")  # read the post_attention_layernorm output


class RotatedEmbedding(nn.Module):
    """ids -> embed(ids) · Q_d' : (…,) -> (…, d'). `weight` is still the original (vocab, hidden)
    table (so a tied lm_head keeps reading it, and `tie_weights` still finds it)."""

    def __init__(self, embed: nn.Embedding, rotation: nn.Parameter):
        super().__init__()
        self.embed = embed
        self.rotation = rotation  # (hidden, d'), shared with UnrotatedNorm

    @property
    def weight(self) -> nn.Parameter:
        return self.embed.weight

    def forward(self, input_ids):
        return self.embed(input_ids) @ self.rotation


class UnrotatedNorm(nn.Module):
    """h -> norm(h · Q_d'ᵀ) : (…, d') -> (…, hidden); `norm` is the original final norm, untouched."""

    def __init__(self, norm: nn.Module, rotation: nn.Parameter):
        super().__init__()
        self.norm = norm
        self.rotation = rotation  # (hidden, d')

    def forward(self, hidden_states):
        return self.norm(hidden_states @ self.rotation.T)


# --- calibration -----------------------------------------------------------------------------

@torch.no_grad()
def hidden_state_covariance(model: nn.Module, calib_ids: torch.Tensor, batch_size: int = 4,
                            normalize: bool = True) -> torch.Tensor:
    """Σ xᵀx (hidden, hidden), float64, over the residual stream x (one row per token) at every
    decoder-layer input and at the final norm's input, on all calibration tokens (n, T).
    Uncentred, as in SliceGPT: the kept energy ||x·Q_d'||² is what matters, not the variance.
    normalize: each row is x/||x|| first, so every token and every depth weighs the same (the
    deep layers' residual norms are many times the shallow ones'; every layer reads its input
    through an RMSNorm, so what it loses is the *relative* error ||x - x·Q_d'Q_d'ᵀ||/||x||)."""
    adapter = adapter_for(model.config)
    points = list(adapter.decoder_layers(model)) + [adapter.final_norm(model)]
    device = next(model.parameters()).device
    hidden = adapter.embed_tokens(model).weight.shape[1]
    cov = torch.zeros(hidden, hidden, dtype=torch.float64, device=device)

    def hook(mod, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        x = h.detach().reshape(-1, h.shape[-1]).double()  # (tokens, hidden)
        if normalize:
            x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        cov.add_(x.T @ x)

    handles = [p.register_forward_pre_hook(hook, with_kwargs=True) for p in points]
    try:
        model.eval()
        for s in range(0, calib_ids.shape[0], batch_size):
            model(input_ids=calib_ids[s : s + batch_size].to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return cov


def pca_rotation(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q, eigenvalues): Q (hidden, hidden) orthogonal, column j the eigenvector of `cov` with
    the j-th largest eigenvalue (so Q[:, :d'] spans the d' most energetic directions)."""
    evals, evecs = torch.linalg.eigh(cov.double())  # ascending
    return evecs.flip(-1), evals.flip(-1)


# --- the edit ----------------------------------------------------------------------------------

def _check_supported(model: nn.Module, adapter: ModelAdapter) -> None:
    """Only pre-norm RMSNorm decoders whose residual stream is read and written exactly by the
    adapter's projections can be rotated exactly; say which architecture is not."""
    known = set(_WRITERS) | set(_READERS_ATTN) | set(_READERS_MLP)
    unknown = sorted(set(adapter.projections) - known)
    if unknown or not set(_WRITERS) <= set(adapter.projections):
        raise ConfigError(f"slicegpt does not support architecture '{adapter.name}': projections {sorted(adapter.projections)} "
                          f"are not q/k/v(qkv), o, gate/up(gate_up), down")
    for layer in adapter.decoder_layers(model):
        # residual-stream norms are the layer's direct children (a per-head q/k norm is not one)
        norms = {n for n, _ in layer.named_children() if "norm" in n.lower()}
        extra = norms - {adapter.input_norm, adapter.post_attention_norm}
        for path in (adapter.input_norm, adapter.post_attention_norm):
            norm = layer.get_submodule(path)
            if isinstance(norm, nn.LayerNorm) or getattr(norm, "bias", None) is not None or norm.weight.ndim != 1:
                extra.add(path)
        if extra:
            raise ConfigError(f"slicegpt does not support architecture '{adapter.name}': norms {sorted(extra)} are not "
                              f"the two pre-sub-layer RMSNorms it can fuse into the projections")


def _linear(weight: torch.Tensor, bias: torch.Tensor | None, like: nn.Linear) -> nn.Linear:
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=like.weight.device, dtype=like.weight.dtype)
    out.weight.data.copy_(weight)
    if bias is not None:
        out.bias.data.copy_(bias)
    return out


def _replace(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for parent in model.modules():
        for name, child in parent.named_children():
            if child is old:
                setattr(parent, name, new)
                return
    raise ConfigError("slicegpt: module to replace not found in the model")


@torch.no_grad()
def rotate_and_slice(model: nn.Module, q_d: torch.Tensor) -> nn.Module:
    """In place: move the decoder stack's residual stream to the basis Q_d' (hidden, d') as in
    the module docstring. With d' = hidden and Q orthogonal the function is unchanged."""
    adapter = adapter_for(model.config)
    _check_supported(model, adapter)
    embed, final_norm = adapter.embed_tokens(model), adapter.final_norm(model)
    hidden, d = q_d.shape
    if embed.weight.shape[1] != hidden or not 0 < d <= hidden:
        raise ConfigError(f"slicegpt: rotation of shape {tuple(q_d.shape)} does not fit hidden size {embed.weight.shape[1]}")
    q = q_d.to(embed.weight.device, torch.float64)
    off = adapter.norm_weight_offset  # Gemma's RMSNorm multiplies by (1 + w)
    # An RMSNorm now sees y = x·Q_d' (d' entries) and divides by sqrt(mean over d' of y²) =
    # sqrt(||y||²/d') ≈ sqrt(||x||²/d'), where the original divided by sqrt(||x||²/hidden): the
    # output is sqrt(hidden/d') times too small. Weight sqrt(hidden/d') restores it, and eps
    # scaled by hidden/d' keeps it exact: y·rsqrt(||y||²/d' + eps·hidden/d')·sqrt(hidden/d')
    # = y·rsqrt(||y||²/hidden + eps).
    scale = math.sqrt(hidden / d)
    for layer in adapter.decoder_layers(model):
        for norm_path, readers in ((adapter.input_norm, _READERS_ATTN), (adapter.post_attention_norm, _READERS_MLP)):
            norm = layer.get_submodule(norm_path)
            gamma = norm.weight.double() + off  # (hidden,)
            for p in readers:
                if p in adapter.projections:
                    lin = adapter.get_linear(layer, p)
                    w = (lin.weight.double() * gamma) @ q  # (out, hidden)·diag(γ)·(hidden, d') -> (out, d')
                    adapter.set_linear(layer, p, _linear(w, lin.bias, lin))
            norm.weight = nn.Parameter(torch.full((d,), scale - off, dtype=norm.weight.dtype, device=norm.weight.device))
            eps_attr = next((a for a in ("variance_epsilon", "eps") if hasattr(norm, a)), None)
            if eps_attr is None:
                raise ConfigError(f"slicegpt does not support architecture '{adapter.name}': {type(norm).__name__} has no eps")
            setattr(norm, eps_attr, getattr(norm, eps_attr) * hidden / d)
        for p in _WRITERS:
            lin = adapter.get_linear(layer, p)
            w = q.T @ lin.weight.double()  # (d', hidden)·(hidden, in) -> (d', in)
            b = None if lin.bias is None else q.T @ lin.bias.double()  # (d',)
            adapter.set_linear(layer, p, _linear(w, b, lin))
    rotation = nn.Parameter(q.to(embed.weight.dtype))  # (hidden, d'), one Parameter in both wrappers
    _replace(model, embed, RotatedEmbedding(embed, rotation))
    _replace(model, final_norm, UnrotatedNorm(final_norm, rotation))
    return model


# --- budget ------------------------------------------------------------------------------------

def params_per_dim(model: nn.Module) -> int:
    """Unique parameters per kept residual dimension: reader rows (out features), writer columns
    (in features + bias), two norm entries per layer, and one row of Q_d'. The count of the
    sliced model is original - (per_dim - hidden)·hidden + per_dim·d'."""
    adapter = adapter_for(model.config)
    hidden = adapter.embed_tokens(model).weight.shape[1]
    n = hidden
    for layer in adapter.decoder_layers(model):
        for p in adapter.projections:
            lin = adapter.get_linear(layer, p)
            n += lin.in_features + (lin.bias is not None) if p in _WRITERS else lin.out_features
        n += 2
    return n


def build(model: nn.Module, target: float | int, calib_ids: torch.Tensor, multiple: int = 8,
          normalize: bool = True) -> BaselineResult:
    """A copy of `model` with its residual stream rotated and sliced to d' dimensions, d' (a
    multiple of `multiple`) chosen so the unique parameters land nearest `target` (a fraction
    of the original's, or an absolute count)."""
    adapter = adapter_for(model.config)
    out = copy_model(model)
    _check_supported(out, adapter)
    original = count_parameters(model)["total"]
    target_n = resolve_target(model, target)
    hidden = adapter.embed_tokens(model).weight.shape[1]
    per_dim = params_per_dim(model)
    fixed = original - (per_dim - hidden) * hidden
    step = multiple if hidden > multiple else 1
    d = min(range(step, hidden, step), key=lambda k: abs(fixed + per_dim * k - target_n), default=None)
    if d is None:
        raise ConfigError(f"slicegpt: hidden size {hidden} leaves no dimension to slice")
    q, evals = pca_rotation(hidden_state_covariance(out, calib_ids, normalize=normalize))
    rotate_and_slice(out, q[:, :d])
    reached = count_parameters(out)["total"]
    rep = budget_report("slicegpt", original, target_n, reached, per_dim * step, {
        "hidden_size": hidden, "sliced_dim": d, "dim_step": step, "params_per_dim": per_dim,
        "energy_kept": round(float(evals[:d].sum() / evals.sum()), 5), "normalized_rows": normalize,
    })
    return BaselineResult(out, rep)
