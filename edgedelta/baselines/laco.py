"""LaCo (Yang et al., 2024, arXiv 2402.11187): collapse rear layers into a prior layer.

Reserving-Differences-while-Seeking-Common (RDSC) merge of layers l..l+m into layer l:
    θ_l* = θ_l + Σ_{k=1..m} (θ_{l+k} − θ_l)
for every linear projection weight (the layer's own norms are kept), then layers
l+1..l+m are removed. The paper's Algorithm 1 walks l from the top (H − C) down; a merge is
kept when the cosine similarity between the final hidden states of the merged and the
current model on a few calibration sentences exceeds a threshold T, after which l jumps
down by an interval I; otherwise l moves down by one.

Budget adaptation (the paper fixes C, I, T and reports whatever size results): the number of
layers to remove is the one landing nearest the target; each merge removes
min(C, still needed) layers; if a whole sweep accepts no merge, the most similar candidate of
that sweep is taken (so each sweep costs one pass over the candidates; the report says which
merges passed T and which were taken as best-of-sweep)."""

from __future__ import annotations

import torch
from torch import nn

from ..delta.accounting import count_parameters
from ..models.adapters import adapter_for
from ..models.surgery import copy_model, layer_params, remove_layers
from .common import BaselineResult, budget_report, resolve_target


@torch.no_grad()
def _final_hidden(model: nn.Module, calib_ids: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    h = model.get_decoder()(input_ids=calib_ids.to(device), use_cache=False).last_hidden_state
    return h.reshape(-1, h.shape[-1]).float()  # (N, H)


@torch.no_grad()
def rdsc_merge(model: nn.Module, l: int, m: int) -> nn.Module:
    """A copy of `model` with layers l+1..l+m merged into layer l (RDSC) and then removed."""
    adapter = adapter_for(model.config)
    out = copy_model(model)
    layers = adapter.decoder_layers(out)
    base = layers[l]
    for proj in adapter.projections:
        w = adapter.get_linear(base, proj).weight
        w0 = w.detach().clone()
        for k in range(1, m + 1):
            w.add_(adapter.get_linear(layers[l + k], proj).weight - w0)
    return remove_layers(out, list(range(l + 1, l + m + 1)))


def _accept(merges: list, names: list, cand: nn.Module, l: int, m: int, sim: float, why: str) -> nn.Module:
    """Record a merge of current layers l+1..l+m into l (named by their original indices)."""
    merges.append({"into": names[l], "merged": names[l + 1 : l + m + 1], "similarity": round(sim, 4), "accepted_by": why})
    del names[l + 1 : l + m + 1]
    return cand


def build(model: nn.Module, target: float | int, calib_ids: torch.Tensor, merge_layers: int = 2, interval: int = 2,
          threshold: float = 0.65, lowest_layer: int = 1) -> BaselineResult:
    """A copy of `model` with rear layers collapsed by RDSC to ~`target` unique parameters.
    merge_layers = C (layers merged into one per step), interval = I, threshold = T,
    lowest_layer = L (the first layer never absorbs others)."""
    adapter = adapter_for(model.config)
    original = count_parameters(model)["total"]
    target_n = resolve_target(model, target)
    sizes = [layer_params(l) for l in adapter.decoder_layers(model)]
    n_layers, per_layer = len(sizes), sizes[0]
    need = min(round((original - target_n) / per_layer), n_layers - 1 - lowest_layer)
    ref = _final_hidden(model, calib_ids)
    current, merges = model, []
    names = list(range(n_layers))  # original index of each current layer
    while need > 0:
        accepted, best = False, None  # best: (similarity, l, m, candidate) of this sweep
        l = len(adapter.decoder_layers(current)) - 1 - merge_layers
        while l >= lowest_layer and need > 0:
            m = min(merge_layers, need, len(adapter.decoder_layers(current)) - 1 - l)
            if m <= 0:
                l -= 1
                continue
            cand = rdsc_merge(current, l, m)
            sim = float(torch.nn.functional.cosine_similarity(_final_hidden(cand, calib_ids), ref, dim=-1).mean())
            if sim > threshold:
                current, need, accepted = _accept(merges, names, cand, l, m, sim, "threshold"), need - m, True
                l = min(l - interval, len(adapter.decoder_layers(current)) - 1 - merge_layers)
            else:
                if best is None or sim > best[0]:
                    best = (sim, l, m, cand)
                l -= 1
        if need > 0 and not accepted:
            if best is None:
                break
            # budget adaptation: no merge passed T in a whole sweep; take the most similar one
            sim, l, m, cand = best
            current, need = _accept(merges, names, cand, l, m, sim, "best-of-sweep"), need - m
    out = current if current is not model else copy_model(model)
    reached = count_parameters(out)["total"]
    rep = budget_report("laco", original, target_n, reached, per_layer, {
        "merges": merges, "layers_left": len(adapter.decoder_layers(out)),
        "merge_layers": merge_layers, "interval": interval, "threshold": threshold,
    })
    return BaselineResult(out, rep)
