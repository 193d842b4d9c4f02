"""The shared-plus-delta structure, separate from how its values are initialised
(two-phase: `apply_sharing` swaps modules, init.py computes the values).

A SharingSpec is the JSON-able description stored in config.json["edgedelta"]: enough to
rebuild the module structure before loading weights."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..errors import ConfigError
from ..models.adapters import ModelAdapter, adapter_for
from .layer import DeltaLinear

SPEC_VERSION = 1


@dataclass
class SharingSpec:
    groups: list[list[int]]
    projections: list[str]
    ranks: dict[str, int]  # projection -> delta rank
    gates: list[str] = field(default_factory=list)  # projections carrying an output gate
    scaled: list[str] = field(default_factory=list)  # projections carrying a per-layer base scale α
    # per group, the layer whose own weights ARE the shared base (base "anchor"/"first"): it is
    # exact and carries no delta (rank 0); None: every layer has a delta (base "mean"/"alternating")
    anchors: list[int] | None = None
    # per decoder layer of the compressed model, the original layer it was (layers removed
    # before sharing leave gaps, e.g. [0..12, 15, 16, 18..29]); None: no layer was removed.
    # groups and anchors above count the compressed model's layers
    source_layers: list[int] | None = None
    version: int = SPEC_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SharingSpec":
        try:
            spec = cls(**d)
        except TypeError as e:
            raise ConfigError(f"malformed edgedelta sharing spec: {e}") from None
        if spec.version != SPEC_VERSION:
            raise ConfigError(f"sharing spec version {spec.version} is not supported (expected {SPEC_VERSION})")
        if spec.anchors is not None and (len(spec.anchors) != len(spec.groups)
                                         or any(a not in g for a, g in zip(spec.anchors, spec.groups))):
            raise ConfigError(f"sharing spec anchors {spec.anchors} do not name one layer of each group {spec.groups}")
        src = spec.source_layers
        if src is not None and (not all(isinstance(i, int) and i >= 0 for i in src) or sorted(set(src)) != list(src)):
            raise ConfigError(f"sharing spec source_layers {src} must be increasing original layer indices")
        return spec

    def source_of(self, layer: int) -> int:
        """The original layer that compressed-model layer `layer` was."""
        return layer if self.source_layers is None else self.source_layers[layer]

    def removed_layers(self, original_layers: int) -> list[int]:
        """Original layers that are not in the compressed model at all."""
        kept = set(range(original_layers) if self.source_layers is None else self.source_layers)
        return [i for i in range(original_layers) if i not in kept]

    def rank_of(self, group_index: int, layer: int, proj: str) -> int:
        """The delta rank of `layer` (in group `group_index`) for `proj`: 0 on the group's anchor."""
        return 0 if self.anchors is not None and self.anchors[group_index] == layer else self.ranks[proj]

    def shared_name(self, group_index: int, proj: str) -> str:
        """Stable, readable name of a group's shared base, e.g. 'shared.g3.up.weight'."""
        return f"shared.g{group_index}.{proj}.weight"


def apply_sharing(model: nn.Module, spec: SharingSpec, adapter: ModelAdapter | None = None) -> dict[tuple[int, str], nn.Parameter]:
    """Replace the grouped layers' projections by DeltaLinear modules in place.

    The base of each (group, projection) is ONE nn.Parameter, initialised to a copy of the
    group's anchor's (else first layer's) weight (init.py overwrites it) and registered in every
    layer of the group. Deltas start at zero; the anchor has none. Returns {(group_index, proj): shared Parameter}."""
    adapter = adapter or adapter_for(model.config)
    layers = adapter.decoder_layers(model)
    shared: dict[tuple[int, str], nn.Parameter] = {}
    bad = [g for g in spec.groups if not g or any(not isinstance(li, int) or not 0 <= li < len(layers) for li in g)]
    if bad:  # e.g. a config.json edited or written for another model
        raise ConfigError(f"sharing spec names layers outside the model's 0..{len(layers) - 1}: {bad}")
    for gi, group in enumerate(spec.groups):
        for proj in spec.projections:
            if any(isinstance(adapter.get_linear(layers[li], proj), DeltaLinear) for li in group):
                raise ConfigError(f"group {group} projection '{proj}' is already shared")
            source = group[0] if spec.anchors is None else spec.anchors[gi]
            w = nn.Parameter(adapter.get_linear(layers[source], proj).weight.detach().clone())  # (out, in)
            shared[(gi, proj)] = w
            for li in group:
                rank = spec.rank_of(gi, li, proj)
                lin = adapter.get_linear(layers[li], proj)
                if lin.weight.shape != w.shape:
                    raise ConfigError(f"layer {li} '{proj}' has shape {tuple(lin.weight.shape)}, group base has {tuple(w.shape)}")
                dl = DeltaLinear(w, rank, bias=lin.bias, gate=proj in spec.gates, base_scale=proj in spec.scaled)
                adapter.set_linear(layers[li], proj, dl)
    return shared


def delta_modules(model: nn.Module, spec: SharingSpec, adapter: ModelAdapter | None = None):
    """Yield (group_index, proj, layer_index, DeltaLinear) for every shared projection."""
    adapter = adapter or adapter_for(model.config)
    layers = adapter.decoder_layers(model)
    for gi, group in enumerate(spec.groups):
        for proj in spec.projections:
            for li in group:
                yield gi, proj, li, adapter.get_linear(layers[li], proj)


def get_spec(model: nn.Module) -> SharingSpec | None:
    """The SharingSpec a compressed model carries (None for a plain model)."""
    return getattr(model, "edgedelta_spec", None)


@torch.no_grad()
def merge_model(model: nn.Module) -> nn.Module:
    """Turn a compressed model back into a plain transformers model (in place): every
    DeltaLinear becomes an unshared nn.Linear with W_shared + B·A (gate folded in)."""
    spec = get_spec(model)
    if spec is None:
        return model
    adapter = adapter_for(model.config)
    layers = adapter.decoder_layers(model)
    for _, proj, li, dl in list(delta_modules(model, spec, adapter)):
        try:
            adapter.set_linear(layers[li], proj, dl.to_linear())
        except ValueError as e:
            raise ValueError(f"layer {li} '{proj}': {e}") from None
    model.edgedelta_spec = None
    if hasattr(model.config, "edgedelta"):
        del model.config.edgedelta
    return model
