"""Budget planner: which consecutive layers share, and at what rank, so the model keeps
`target_params` of its unique parameters.

Sensitivity of each candidate group is measured, not guessed: the group alone is shared
(with the configured init) and the KL divergence of its next-token distribution from the
original's on calibration text is recorded. The fewest groups that meet the budget are
chosen, non-overlapping and with the least total sensitivity; any slack left is spent on
higher delta ranks."""

from __future__ import annotations

import copy
import math
from contextlib import nullcontext

import torch
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..models.layer_inputs import LayerInputs
from .accounting import count_parameters
from .groups import build_spec, fill_group, group_savings
from .structure import SharingSpec, apply_sharing
from .sublayer_gates import fit_sublayer_gates


SENSITIVITY_SEQUENCES = 4  # calibration sequences the sensitivity is measured on


@torch.no_grad()
def log_probs(model, ids: torch.Tensor) -> torch.Tensor:
    ids = ids.to(next(model.parameters()).device)
    logits = model(input_ids=ids).logits.float()  # (n, T, vocab)
    for row in logits:  # log-softmax in place, a row at a time: no second (n, T, vocab) tensor
        row.sub_(torch.logsumexp(row, dim=-1, keepdim=True))
    return logits


def kl_to(ref_logp: torch.Tensor, logp: torch.Tensor) -> float:
    """Mean per-token KL(original ‖ candidate), nats. (n, T, V) inputs, one row at a time: the
    temporaries of a whole batch are 3 x n·T·V floats (1.9 GB for 4 x 256 tokens of Qwen2.5's
    151,936-token vocabulary)."""
    total = sum(float((r.exp() * (r - c)).sum(-1).sum()) for r, c in zip(ref_logp, logp))
    return total / (ref_logp.shape[0] * ref_logp.shape[1])


@torch.no_grad()
def group_sensitivity(model, adapter, spec: SharingSpec, cfg, covs, ids: torch.Tensor, ref_logp: torch.Tensor, whiten=None,
                      inputs: LayerInputs | None = None) -> float:
    """KL(original ‖ model) per token on ids with spec's single group shared (gates fitted on
    ids), then the model is restored exactly. KL over the whole distribution ranks candidates
    with less noise than the NLL change of a few hundred tokens. `inputs`: the original's
    layer inputs on ids, so that both forwards start at the group's first layer."""
    layers = adapter.decoder_layers(model)
    first = spec.groups[0][0]
    saved = {(li, p): adapter.get_linear(layers[li], p) for li in spec.groups[0] for p in spec.projections}
    originals = {li: copy.deepcopy(layers[li]) for li in spec.groups[0]} if spec.gates else {}
    try:
        apply_sharing(model, spec, adapter)
        # no alternating refinement: ranking candidates needs the cheap init only (the final
        # init runs every iteration); this keeps a 30-layer sensitivity sweep to minutes
        fill_group(model, lambda li, p: saved[(li, p)].weight, adapter, spec, 0, cfg, covs, whiten, 0)
        if spec.gates:  # its forward ends after the group's last layer
            with inputs.from_layer(first) if inputs else nullcontext():
                fit_sublayer_gates(model, originals, adapter, spec, ids)
        with inputs.from_layer(first) if inputs else nullcontext():
            return kl_to(ref_logp, log_probs(model, ids))
    finally:
        for (li, p), lin in saved.items():
            adapter.set_linear(layers[li], p, lin)


def plan_budget(model, cfg, adapter, covs, calib_ids: torch.Tensor, progress: bool = True, whiten=None,
                influence: list[float] | None = None):
    """Returns ({name: groups}, ranks, plan report): one or two candidate plans of equal size
    and ranks; share.share_layers builds each and keeps the one closest to the original.
    `influence`: block influence per layer (anchor base)."""
    num_layers = len(adapter.decoder_layers(model))
    gs = cfg.group_size
    total = count_parameters(model)["total"]
    need = (1.0 - cfg.target_params) * total
    # budget mode chooses ranks: start from the configured ones, capped at an eighth of each
    # matrix's smaller side (a delta near full rank saves nothing), then spend the slack below
    layer0 = adapter.decoder_layers(model)[0]
    start = {p: min(cfg.rank_for(p, adapter.kinds[p]), max(1, min(adapter.get_linear(layer0, p).weight.shape) // 8))
             for p in cfg.shared_projections(adapter)}
    base_spec = build_spec(cfg, adapter, [], model, start, influence)
    anchored = base_spec.anchors is not None
    per_group = group_savings(model, adapter, gs, base_spec.projections, base_spec.ranks, base_spec.gates, base_spec.scaled, anchored)
    if per_group <= 0:
        raise ConfigError(f"ranks {base_spec.ranks} are so high that sharing saves nothing; lower rank_attn/rank_mlp")
    max_groups = num_layers // gs
    if max_groups * per_group < need:
        best = 1.0 - max_groups * per_group / total
        raise ConfigError(
            f"target_params {cfg.target_params} cannot be reached: sharing every layer in groups of {gs} at ranks "
            f"{base_spec.ranks} keeps at best {best:.3f} of the parameters (raise the target, lower ranks or enlarge group_size)")

    ids = calib_ids[:SENSITIVITY_SEQUENCES]
    ref_logp = log_probs(model, ids)
    inputs = LayerInputs(model, adapter, ids)  # every candidate's forwards start at its first layer
    candidates = [list(range(s, s + gs)) for s in range(0, num_layers - gs + 1)]
    sens: list[tuple[float, list[int]]] = []  # (KL to the original, group)
    for g in tqdm(candidates, desc="sensitivity", disable=not progress, leave=False):
        spec = build_spec(cfg, adapter, [g], model, base_spec.ranks, influence)
        sens.append((group_sensitivity(model, adapter, spec, cfg, covs, ids, ref_logp, whiten, inputs), g))

    k = math.ceil(need / per_group)
    # Single-group KLs do not add up exactly (errors compound through later layers), so a
    # second plan ranks groups by what the anchor leaves to approximate: the block influence of
    # the non-anchor layers (ShortGPT's measure). Both are exact optima of their cost.
    plans = {"kl": cheapest_groups([d for d, _ in sens], gs, num_layers, k)}
    if anchored:
        plans["influence"] = cheapest_groups([sum(influence[li] for li in g) - max(influence[li] for li in g) for _, g in sens],
                                             gs, num_layers, k)
    ranks = _spend_slack(model, adapter, base_spec, k, gs, need, anchored)
    plan = {"mode": "budget", "target_params": cfg.target_params, "sensitivity_metric": "KL(original || shared) nats/token",
            "sensitivity": {",".join(map(str, g)): round(d, 4) for d, g in sens}}
    return plans, ranks, plan


def cheapest_groups(cost: list[float], gs: int, num_layers: int, k: int) -> list[list[int]]:
    """The k non-overlapping groups of gs consecutive layers with the least total cost
    (cost[s] = sensitivity of the group starting at layer s). Exact dynamic programme over
    layers: best[i][j] = least cost of j groups inside layers 0..i-1 (greedy picking can
    block itself: two cheap overlapping candidates may leave no room for the k-th group)."""
    inf = float("inf")
    best = [[0.0] + [inf] * k for _ in range(num_layers + 1)]
    take = [[False] * (k + 1) for _ in range(num_layers + 1)]
    for i in range(1, num_layers + 1):
        for j in range(1, k + 1):
            best[i][j] = best[i - 1][j]
            if i >= gs and best[i - gs][j - 1] + cost[i - gs] < best[i][j]:
                best[i][j], take[i][j] = best[i - gs][j - 1] + cost[i - gs], True
    if best[num_layers][k] == inf:  # unreachable: max_groups was checked before
        raise ConfigError(f"{k} non-overlapping groups of {gs} do not fit in {num_layers} layers")
    groups, i, j = [], num_layers, k
    while j:
        if take[i][j]:
            groups.append(list(range(i - gs, i)))
            i, j = i - gs, j - 1
        else:
            i -= 1
    return sorted(groups)


def _spend_slack(model, adapter, spec: SharingSpec, n_groups: int, gs: int, need: float, anchored: bool) -> dict[str, int]:
    """Raise all ranks by a common factor while n_groups still save at least `need`."""
    best = dict(spec.ranks)
    for step in range(1, 400):
        scale = 1.0 + step * 0.01
        trial = {p: int(round(r * scale)) for p, r in spec.ranks.items()}
        if n_groups * group_savings(model, adapter, gs, spec.projections, trial, spec.gates, spec.scaled, anchored) < need:
            break
        best = trial
    return best

