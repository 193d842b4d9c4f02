"""Which student parameters train, by kind, each tagged with its sharing group (the
reconstruction stage fits one group at a time).

Kinds: deltas (A, B of every DeltaLinear), gates, norms (of the compressed layers only, so
unshared layers stay bit-identical to the teacher's and the teacher prefix can be reused),
shared (the group bases themselves), lora (a low-rank update of each shared base, shared by
the whole group, merged into the base at the end so the saved model keeps its structure),
layer-lora (a LoRA on every projection of every unshared layer, merged at the end: what
healing a layer-removal baseline trains; the unshared layers then differ from the teacher's)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..delta.layer import DeltaLinear
from ..delta.structure import SharingSpec
from ..models.adapters import adapter_for


@dataclass
class TrainableParam:
    name: str  # stable name (checkpoint key)
    param: nn.Parameter
    kind: str
    group: int  # sharing-group index


class SharedLoRA(nn.Module):
    """Parametrization W -> W + B·A for a group's shared base. A: (r, in), B: (out, r);
    B starts at zero so the model is unchanged at step 0."""

    def __init__(self, out_features: int, in_features: int, rank: int, generator: torch.Generator, like: torch.Tensor):
        super().__init__()
        a = torch.randn(rank, in_features, generator=generator) / math.sqrt(in_features)
        self.A = nn.Parameter(a.to(dtype=like.dtype, device=like.device))
        self.B = nn.Parameter(torch.zeros(out_features, rank, dtype=like.dtype, device=like.device))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:  # (out, in)
        return weight + self.B @ self.A


def select_trainable(student: nn.Module, spec: SharingSpec, kinds: list[str], lora_rank: int = 8, seed: int = 0) -> list[TrainableParam]:
    """Freeze the student, then enable (and return) the chosen parameters. With 'lora',
    registers a SharedLoRA on every DeltaLinear of each group (one module per group/proj)."""
    adapter = adapter_for(student.config)
    layers = adapter.decoder_layers(student)
    for p in student.parameters():
        p.requires_grad_(False)
    names = {id(p): n for n, p in student.named_parameters(remove_duplicate=True)}
    out: list[TrainableParam] = []
    seen: set[int] = set()

    def add(name, p, kind, gi):
        if id(p) not in seen:
            seen.add(id(p))
            p.requires_grad_(True)
            out.append(TrainableParam(name, p, kind, gi))

    g = torch.Generator().manual_seed(seed)
    for gi, group in enumerate(spec.groups):
        for proj in spec.projections:
            mods = [adapter.get_linear(layers[li], proj) for li in group]
            for dl in mods:
                if not isinstance(dl, DeltaLinear):
                    raise TypeError(f"layer projection '{proj}' of group {gi} is {type(dl).__name__}, not DeltaLinear")
                if "deltas" in kinds and dl.rank:
                    add(names[id(dl.delta_A)], dl.delta_A, "deltas", gi)
                    add(names[id(dl.delta_B)], dl.delta_B, "deltas", gi)
                if "gates" in kinds and dl.gate is not None:
                    add(names[id(dl.gate)], dl.gate, "gates", gi)
            if "shared" in kinds:
                add(spec.shared_name(gi, proj), mods[0].weight, "shared", gi)
            if "lora" in kinds:
                w = mods[0].weight
                lora = SharedLoRA(w.shape[0], w.shape[1], lora_rank, g, w)
                for dl in mods:
                    parametrize.register_parametrization(dl, "weight", lora)
                add(f"lora.g{gi}.{proj}.A", lora.A, "lora", gi)
                add(f"lora.g{gi}.{proj}.B", lora.B, "lora", gi)
        if "norms" in kinds:
            for li in group:
                for n, p in layers[li].named_parameters():
                    if "norm" in n and id(p) in names:
                        add(names[id(p)], p, "norms", gi)
    if "layer-lora" in kinds:  # group -1: no sharing group (reconstruction fits groups only)
        grouped = {li for g in spec.groups for li in g}
        unshared = [li for li in range(len(layers)) if li not in grouped]
        for tp in add_dense_lora(student, lora_rank, seed=seed, norms=False, layers=unshared, freeze=False):
            add(tp.name, tp.param, "layer-lora", -1)
    return out


@torch.no_grad()
def merge_lora(student: nn.Module, spec: SharingSpec) -> None:
    """Fold every SharedLoRA into its shared base (W += B·A once per group) and remove the
    parametrizations, so each group's DeltaLinears hold the one shared Parameter again."""
    adapter = adapter_for(student.config)
    layers = adapter.decoder_layers(student)
    for group in spec.groups:
        for proj in spec.projections:
            mods = [adapter.get_linear(layers[li], proj) for li in group]
            if not parametrize.is_parametrized(mods[0], "weight"):
                continue
            plist = mods[0].parametrizations.weight
            base, lora = plist.original, plist[0]
            base.add_(lora.B @ lora.A)  # (out, r) @ (r, in)
            for dl in mods:
                parametrize.remove_parametrizations(dl, "weight", leave_parametrized=False)
                assert dl.weight is base  # sharing survives the merge


def add_dense_lora(model: nn.Module, rank: int, projections: list[str] | None = None, seed: int = 0,
                   norms: bool = True, layers: list[int] | None = None, freeze: bool = True) -> list[TrainableParam]:
    """LoRA (W + B·A, B = 0 at start) on the plain nn.Linear projections of every decoder
    layer (or of `layers`), plus optionally their norms: the healing recipe for a layer-removal
    baseline. Merged by `merge_dense_lora`, it adds no parameters. With `freeze`, everything
    else stops training (freeze=False adds to what another selection enabled)."""
    adapter = adapter_for(model.config)
    stack = adapter.decoder_layers(model)
    if freeze:
        for p in model.parameters():
            p.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    out: list[TrainableParam] = []
    for li, layer in enumerate(stack):
        if layers is not None and li not in layers:
            continue
        for proj in projections or list(adapter.projections):
            try:
                lin = adapter.get_linear(layer, proj)
            except AttributeError:  # a removed sub-layer
                continue
            if not isinstance(lin, nn.Linear):
                continue
            lora = SharedLoRA(lin.out_features, lin.in_features, rank, g, lin.weight)
            parametrize.register_parametrization(lin, "weight", lora)
            out += [TrainableParam(f"lora.l{li}.{proj}.A", lora.A, "lora", li), TrainableParam(f"lora.l{li}.{proj}.B", lora.B, "lora", li)]
        if norms:
            for n, p in layer.named_parameters():
                if "norm" in n:
                    p.requires_grad_(True)
                    out.append(TrainableParam(f"layers.{li}.{n}", p, "norms", li))
    return out


@torch.no_grad()
def merge_dense_lora(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Linear) and parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
