"""Which student parameters train, by kind, each tagged with its sharing group (the
reconstruction stage fits one group at a time).

Kinds: deltas (A, B of every DeltaLinear), gates, norms (of the compressed layers only, so
unshared layers stay bit-identical to the teacher's and the teacher prefix can be reused),
shared (the group bases themselves), lora (a low-rank update of each shared base, shared by
the whole group, merged into the base at the end so the saved model keeps its structure;
delta/lora.py),
layer-lora (a LoRA on every projection of every unshared layer, merged at the end: what
healing a layer-removal baseline trains; the unshared layers then differ from the teacher's)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..delta.layer import DeltaLinear
from ..delta.lora import add_layer_lora, attach_lora
from ..delta.structure import SharingSpec
from ..models.adapters import adapter_for


@dataclass
class TrainableParam:
    name: str  # stable name (checkpoint key)
    param: nn.Parameter
    kind: str
    group: int  # sharing-group index


def select_trainable(student: nn.Module, spec: SharingSpec, kinds: list[str], lora_rank: int = 8, seed: int = 0) -> list[TrainableParam]:
    """Freeze the student, then enable (and return) the chosen parameters. With 'lora',
    registers one LoRA on every DeltaLinear of each group (one per group and projection);
    delta.lora.merge_lora folds every LoRA in when training ends."""
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
            if "lora" in kinds:  # one LoRA for the group's one base
                lora = attach_lora(mods, lora_rank, g)
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


def add_dense_lora(model: nn.Module, rank: int, projections: list[str] | None = None, seed: int = 0,
                   norms: bool = True, layers: list[int] | None = None, freeze: bool = True) -> list[TrainableParam]:
    """A LoRA on the plain nn.Linear projections of every decoder layer (or of `layers`), plus
    optionally their norms: the healing recipe for a layer-removal baseline. Merged by
    delta.lora.merge_lora, it adds no parameters. With `freeze`, everything else stops
    training (freeze=False adds to what another selection enabled)."""
    if freeze:
        for p in model.parameters():
            p.requires_grad_(False)
    out: list[TrainableParam] = []
    for li, proj, lora in add_layer_lora(model, rank, torch.Generator().manual_seed(seed), layers, projections):
        out += [TrainableParam(f"lora.l{li}.{proj}.A", lora.A, "lora", li), TrainableParam(f"lora.l{li}.{proj}.B", lora.B, "lora", li)]
    if norms:
        for li, layer in enumerate(adapter_for(model.config).decoder_layers(model)):
            if layers is None or li in layers:
                for n, p in layer.named_parameters():
                    if "norm" in n:
                        p.requires_grad_(True)
                        out.append(TrainableParam(f"layers.{li}.{n}", p, "norms", li))
    return out
