"""Structural edits of a decoder that leave a model transformers still runs (HF forward,
`generate` with a KV cache): removing whole layers, or replacing an attention or MLP sub-layer
by a zero contribution. Used by the removal baselines and by removal before sharing."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import ConfigError
from .adapters import ModelAdapter, adapter_for


class SkippedAttention(nn.Module):
    """A dropped attention sub-layer: contributes nothing to the residual stream, no parameters."""

    def __init__(self, layer_idx: int | None = None):
        super().__init__()
        self.layer_idx = layer_idx

    def forward(self, hidden_states, *args, **kwargs):
        return torch.zeros_like(hidden_states), None


class SkippedMLP(nn.Module):
    """A dropped MLP sub-layer: contributes nothing to the residual stream, no parameters."""

    def forward(self, hidden_states):
        return torch.zeros_like(hidden_states)


def attn_path(adapter: ModelAdapter) -> str:
    """Path of the attention module in a layer ("self_attn")."""
    return adapter.sublayer_path("o")


def mlp_path(adapter: ModelAdapter) -> str:
    return adapter.sublayer_path("down")


def _set(layer: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, attr = path.rpartition(".")
    setattr(layer.get_submodule(parent) if parent else layer, attr, module)


def drop_sublayers(model: nn.Module, attn: set[int], mlp: set[int]) -> nn.Module:
    """In place: replace the attention (or MLP) of the given layers, with its pre-norm, by a
    zero contribution; a layer that loses both is removed. Then re-number the KV-cache slots."""
    adapter = adapter_for(model.config)
    layers = adapter.decoder_layers(model)
    for i, layer in enumerate(layers):
        if i in attn:
            _set(layer, attn_path(adapter), SkippedAttention())
            _set(layer, adapter.input_norm, nn.Identity())
        if i in mlp:
            _set(layer, mlp_path(adapter), SkippedMLP())
            _set(layer, adapter.post_attention_norm, nn.Identity())
    return remove_layers(model, sorted(attn & mlp))


def remove_layers(model: nn.Module, indices: list[int]) -> nn.Module:
    """In place: delete decoder layers, fix config.num_hidden_layers (and layer_types), and
    give the remaining attention modules consecutive KV-cache slots 0..n_attn-1 (DynamicCache
    is sized by num_hidden_layers and its length is read from slot 0)."""
    adapter = adapter_for(model.config)
    layers = adapter.decoder_layers(model)
    drop = set(indices)
    if any(not 0 <= i < len(layers) for i in drop):
        raise ConfigError(f"layer indices {sorted(drop)} out of range 0..{len(layers) - 1}")
    kept = [l for i, l in enumerate(layers) if i not in drop]
    if not kept:
        raise ConfigError("cannot remove every decoder layer")
    base = layers  # ModuleList object inside the model: replace its contents in place
    for _ in range(len(base)):
        del base[0]
    for l in kept:
        base.append(l)
    cfg = model.config
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [t for i, t in enumerate(cfg.layer_types) if i not in drop]
    cfg.num_hidden_layers = len(kept)
    slot = 0
    for l in kept:
        attn = l.get_submodule(attn_path(adapter))
        if not isinstance(attn, SkippedAttention) and hasattr(attn, "layer_idx"):
            attn.layer_idx = slot
            slot += 1
    if slot == 0:
        raise ConfigError("every attention sub-layer was dropped; the model would not attend to context")
    return model


def copy_model(model: nn.Module, reuse_weights: bool = False) -> nn.Module:
    """A deep copy to edit (baselines never modify their input). reuse_weights: new modules
    over `model`'s own parameters and buffers, no tensor copied (7 GB saved on a 1.5B fp32
    model), for a caller that only replaces modules and never writes into a tensor it
    inherited, nor trains the copy beside `model`."""
    memo = {id(t): t for t in (*model.parameters(), *model.buffers())} if reuse_weights else None
    return copy.deepcopy(model, memo).eval()


def layer_params(layer: nn.Module) -> int:
    return sum(p.numel() for p in layer.parameters())
