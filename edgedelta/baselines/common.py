"""What the structured-pruning baselines share: measuring each layer's (or sub-layer's)
input and output on calibration text, removing whole layers or sub-layers so the model still
runs (HF forward, `generate` with a KV cache), and hitting a unique-parameter budget.

Every baseline is a free function `build(model, target, calib_ids) -> BaselineResult` that
works on a deep copy (the input model is never modified) and touches layers only through
the model adapter."""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field

import torch
from torch import nn

from ..delta.accounting import count_parameters
from ..errors import ConfigError
from ..models.adapters import ModelAdapter, adapter_for


@dataclass
class BaselineResult:
    model: nn.Module
    report: dict = field(default_factory=dict)


# --- budgets -----------------------------------------------------------------------------

def resolve_target(model: nn.Module, target: float | int) -> int:
    """A target as unique parameters: a fraction in (0, 1) of the model's, or an absolute count."""
    total = count_parameters(model)["total"]
    if isinstance(target, float) and 0 < target < 1:
        return int(round(total * target))
    t = int(target)
    if not 0 < t < total:
        raise ConfigError(f"target of {target} unique parameters is not below the model's {total} (give a fraction in (0, 1) or a smaller count)")
    return t


def budget_report(method: str, original: int, target: int, reached: int, granularity: int, detail: dict) -> dict:
    """The facts every baseline reports: how close to the budget it got, and why not closer."""
    gap = reached - target
    rep = {
        "method": method, "original_params": original, "target_params": target, "params": reached,
        "params_fraction": reached / original, "gap_params": gap, "gap_fraction_of_target": gap / target,
        "granularity_params": granularity, **detail,
    }
    if abs(gap) > granularity:
        raise ConfigError(f"{method} cannot reach {target} unique parameters: the closest it gets is {reached} "
                          f"({100 * gap / target:+.2f}%, steps of {granularity})")
    if gap:
        print(f"edgedelta: {method} reached {reached / 1e6:.3f}M unique parameters for a target of {target / 1e6:.3f}M "
              f"({100 * gap / target:+.2f}%; it removes parameters in steps of {granularity / 1e6:.3f}M)", file=sys.stderr)
    return rep


# --- measuring layers ----------------------------------------------------------------------

class _Capture:
    """Forward hooks recording, per decoder layer, the residual stream at three points:
    layer input X, after attention M = X + attn(norm(X)), and layer output Y = M + mlp(norm(M)).
    Each stored as (N, H) float32 rows (padding-free calibration, so every token counts)."""

    def __init__(self, model: nn.Module, adapter: ModelAdapter):
        self.layers = adapter.decoder_layers(model)
        self.adapter = adapter
        self.inputs: dict[int, list[torch.Tensor]] = {}
        self.mids: dict[int, list[torch.Tensor]] = {}
        self.outputs: dict[int, list[torch.Tensor]] = {}
        self.handles = []
        for i, layer in enumerate(self.layers):
            self.handles.append(layer.register_forward_pre_hook(self._pre(i), with_kwargs=True))
            self.handles.append(layer.register_forward_hook(self._post(i)))
            norm = layer.get_submodule(adapter.post_attention_norm)
            self.handles.append(norm.register_forward_pre_hook(self._mid(i)))

    @staticmethod
    def _flat(x: torch.Tensor) -> torch.Tensor:
        return x.detach().reshape(-1, x.shape[-1]).float()

    def _pre(self, i):
        def hook(mod, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            self.inputs.setdefault(i, []).append(self._flat(h))
        return hook

    def _mid(self, i):
        def hook(mod, args):
            self.mids.setdefault(i, []).append(self._flat(args[0]))
        return hook

    def _post(self, i):
        def hook(mod, args, out):
            h = out[0] if isinstance(out, tuple) else out
            self.outputs.setdefault(i, []).append(self._flat(h))
        return hook

    def close(self):
        for h in self.handles:
            h.remove()


def _mean_cos(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    x, y = torch.cat(a), torch.cat(b)  # (N, H)
    return float(torch.nn.functional.cosine_similarity(x, y, dim=-1).mean())


@torch.no_grad()
def layer_similarities(model: nn.Module, calib_ids: torch.Tensor, batch_size: int = 4) -> list[dict]:
    """Per layer: cos(X, Y) of the whole block, cos(X, M) of the attention sub-layer and
    cos(M, Y) of the MLP sub-layer, averaged over all calibration tokens. calib_ids: (n, T)."""
    adapter = adapter_for(model.config)
    model.eval()
    device = next(model.parameters()).device
    cap = _Capture(model, adapter)
    try:
        for s in range(0, calib_ids.shape[0], batch_size):
            model(input_ids=calib_ids[s : s + batch_size].to(device), use_cache=False)
    finally:
        cap.close()
    out = []
    for i in range(len(cap.layers)):
        if i not in cap.inputs:  # a layer skipped by the forward (should not happen)
            raise ConfigError(f"layer {i} did not run during calibration")
        out.append({
            "layer": i,
            "block_cos": _mean_cos(cap.inputs[i], cap.outputs[i]),
            "attn_cos": _mean_cos(cap.inputs[i], cap.mids[i]),
            "mlp_cos": _mean_cos(cap.mids[i], cap.outputs[i]),
        })
    return out


# --- structural edits ------------------------------------------------------------------------

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


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy to edit (baselines never modify their input)."""
    return copy.deepcopy(model).eval()


def layer_params(layer: nn.Module) -> int:
    return sum(p.numel() for p in layer.parameters())
