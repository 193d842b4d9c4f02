"""ShortGPT (Men et al., 2024, arXiv 2403.03853): remove the decoder layers with the lowest
Block Influence, BI_i = 1 - E_tokens[cos(X_i, Y_i)] (X_i, Y_i: layer i's input and output
hidden states on calibration text), measured once on the original model.

Budget: the number of layers removed is the one whose unique-parameter count lands nearest
the target (whole layers: one layer of SmolLM2-135M is 3.54M parameters, 2.6% of the model)."""

from __future__ import annotations

import torch
from torch import nn

from ..delta.accounting import count_parameters
from ..models.adapters import adapter_for
from ..models.similarity import block_influence
from ..models.surgery import copy_model, layer_params, remove_layers
from .common import BaselineResult, budget_report, resolve_target


def build(model: nn.Module, target: float | int, calib_ids: torch.Tensor) -> BaselineResult:
    """A copy of `model` with the lowest-BI layers removed, at ~`target` unique parameters
    (a fraction of the original's, or an absolute count)."""
    adapter = adapter_for(model.config)
    original = count_parameters(model)["total"]
    target_n = resolve_target(model, target)
    bi = block_influence(model, calib_ids)
    order = sorted(range(len(bi)), key=lambda i: bi[i])  # least influential first
    sizes = [layer_params(l) for l in adapter.decoder_layers(model)]
    # k layers removed -> params; choose k nearest the target (never all layers)
    best_k, best_gap, removed = 0, abs(original - target_n), 0
    for k in range(1, len(order)):
        removed += sizes[order[k - 1]]
        if abs(original - removed - target_n) < best_gap:
            best_k, best_gap = k, abs(original - removed - target_n)
    drop = sorted(order[:best_k])
    out = remove_layers(copy_model(model), drop)
    reached = count_parameters(out)["total"]
    rep = budget_report("shortgpt", original, target_n, reached, max(sizes), {
        "removed_layers": drop, "block_influence": [round(b, 5) for b in bi],
        "layers_left": len(adapter.decoder_layers(out)),
    })
    return BaselineResult(out, rep)
