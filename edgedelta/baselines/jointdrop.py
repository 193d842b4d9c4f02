"""JointDrop (He et al., 2024, "What Matters in Transformers? Not All Attention Is Needed",
arXiv 2406.15786): attention and MLP sub-layers are ranked together by importance
S = 1 − E_tokens[cos(X, Y)] (X: the residual stream entering the sub-layer, Y = X + f(norm(X))
leaving it), measured once on calibration text, and the least important are dropped (the
sub-layer and its pre-norm are removed; the residual passes through unchanged).

Budget: walking the ranking from least important, a sub-layer is dropped when doing so moves
the unique-parameter count closer to the target; so the last steps may skip a (large) MLP to
drop a (small) attention block instead. Attention sub-layers are ~1/4 of a Llama layer here,
so the budget is met to within ~half an attention block."""

from __future__ import annotations

import torch
from torch import nn

from ..delta.accounting import count_parameters
from ..models.adapters import adapter_for
from ..models.similarity import layer_similarities
from ..models.surgery import attn_path, copy_model, drop_sublayers, mlp_path
from .common import BaselineResult, budget_report, resolve_target


def _sublayer_params(layer: nn.Module, path: str, norm: str) -> int:
    return sum(p.numel() for p in layer.get_submodule(path).parameters()) + sum(p.numel() for p in layer.get_submodule(norm).parameters())


def importance(model: nn.Module, calib_ids: torch.Tensor) -> list[dict]:
    """[{"kind": "attn"|"mlp", "layer", "importance", "params"}], least important first."""
    adapter = adapter_for(model.config)
    sims = layer_similarities(model, calib_ids)
    items = []
    for i, (layer, s) in enumerate(zip(adapter.decoder_layers(model), sims)):
        items.append({"kind": "attn", "layer": i, "importance": 1.0 - s["attn_cos"],
                      "params": _sublayer_params(layer, attn_path(adapter), adapter.input_norm)})
        items.append({"kind": "mlp", "layer": i, "importance": 1.0 - s["mlp_cos"],
                      "params": _sublayer_params(layer, mlp_path(adapter), adapter.post_attention_norm)})
    return sorted(items, key=lambda d: d["importance"])


def build(model: nn.Module, target: float | int, calib_ids: torch.Tensor) -> BaselineResult:
    """A copy of `model` with the least important attention/MLP sub-layers dropped, at
    ~`target` unique parameters."""
    original = count_parameters(model)["total"]
    target_n = resolve_target(model, target)
    need = original - target_n
    ranked = importance(model, calib_ids)
    n_layers = len(ranked) // 2
    removed, attn, mlp, dropped = 0, set(), set(), []
    for it in ranked:
        if abs(need - removed - it["params"]) < abs(need - removed):
            if it["kind"] == "attn" and len(attn) == n_layers - 1:
                continue  # keep at least one attention sub-layer
            (attn if it["kind"] == "attn" else mlp).add(it["layer"])
            removed += it["params"]
            dropped.append(f"{it['kind']}{it['layer']}")
    out = drop_sublayers(copy_model(model), attn, mlp)
    reached = count_parameters(out)["total"]
    granularity = min(it["params"] for it in ranked)
    rep = budget_report("jointdrop", original, target_n, reached, max(it["params"] for it in ranked), {
        "dropped": dropped, "dropped_attention": sorted(attn), "dropped_mlp": sorted(mlp),
        "smallest_step_params": granularity,
        "importance": [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in it.items()} for it in ranked],
    })
    return BaselineResult(out, rep)
