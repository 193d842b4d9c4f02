"""The one LoRA of edgedelta: a low-rank update W -> W + B·A registered as a parametrization
of a projection's `weight`, trained, then merged into the weight so the saved model has no
extra parameters. The same LoRA object may sit on every layer of a sharing group (it adapts
the one shared base, merged once). Distillation (distill/trainable.py: shared-base and
layer LoRAs) and the healing of removal baselines (baselines/heal.py) both use it."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..models.adapters import adapter_for


class LoRA(nn.Module):
    """Parametrization W -> W + B·A. A: (r, in), random / sqrt(in); B: (out, r), zero, so the
    model is unchanged at step 0."""

    def __init__(self, out_features: int, in_features: int, rank: int, generator: torch.Generator, like: torch.Tensor):
        super().__init__()
        a = torch.randn(rank, in_features, generator=generator) / math.sqrt(in_features)  # drawn on the CPU: same on any device
        self.A = nn.Parameter(a.to(dtype=like.dtype, device=like.device))
        self.B = nn.Parameter(torch.zeros(out_features, rank, dtype=like.dtype, device=like.device))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:  # (out, in)
        return weight + self.B @ self.A


def attach_lora(modules: list[nn.Module], rank: int, generator: torch.Generator) -> LoRA:
    """One LoRA on the `weight` of every module in `modules` (all holding the same weight, or
    a single module), rank capped at the matrix's smaller side."""
    w = modules[0].weight
    lora = LoRA(w.shape[0], w.shape[1], min(rank, *w.shape), generator, w)
    for m in modules:
        parametrize.register_parametrization(m, "weight", lora)
    return lora


def add_layer_lora(model: nn.Module, rank: int, generator: torch.Generator, layers: list[int] | None = None,
                   projections: list[str] | None = None) -> list[tuple[int, str, LoRA]]:
    """A LoRA on each plain nn.Linear projection of every decoder layer (or of `layers`);
    returns (layer index, projection, LoRA) in layer then projection order. Projections a
    removal baseline dropped, and shared ones (DeltaLinear), are skipped."""
    adapter = adapter_for(model.config)
    out = []
    for li, layer in enumerate(adapter.decoder_layers(model)):
        if layers is not None and li not in layers:
            continue
        for proj in projections or list(adapter.projections):
            try:
                lin = adapter.get_linear(layer, proj)
            except AttributeError:  # a removed sub-layer
                continue
            if isinstance(lin, nn.Linear):  # not a DeltaLinear
                out.append((li, proj, attach_lora([lin], rank, generator)))
    return out


@torch.no_grad()
def merge_lora(model: nn.Module) -> None:
    """Fold every LoRA into the weight it adapts (W += B·A, once per weight even when several
    modules share it) and remove the parametrizations: each module holds its original
    Parameter object again, so a shared base stays shared. Raises ValueError naming the
    module when the merged weight is not finite (nothing is left half-merged)."""
    owners: dict[int, list[tuple[str, nn.Module]]] = {}
    for name, m in model.named_modules():
        if parametrize.is_parametrized(m, "weight") and any(isinstance(p, LoRA) for p in m.parametrizations.weight):
            owners.setdefault(id(m.parametrizations.weight.original), []).append((name, m))
    merged = []
    for mods in owners.values():
        name, first = mods[0]
        plist = first.parametrizations.weight
        w = plist.original + sum(p.B @ p.A for p in plist if isinstance(p, LoRA))  # (out, in)
        if not torch.isfinite(w).all():
            raise ValueError(f"LoRA merge of '{name}.weight' gives non-finite values")
        merged.append((plist.original, w, mods))
    for base, w, mods in merged:
        base.copy_(w)
        for _, m in mods:
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
