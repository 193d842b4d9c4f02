"""Budget planner: which consecutive layers share, and at what rank, so the model keeps
`target_params` of its unique parameters.

Sensitivity of each candidate group is measured, not guessed: the group alone is shared
(with the configured init) and the increase in next-token NLL on calibration text is
recorded. Groups are taken greedily from least to most sensitive (non-overlapping) until
the budget is met; any slack left is spent on higher delta ranks."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..errors import ConfigError
from .accounting import count_parameters
from .structure import SharingSpec, apply_sharing


@torch.no_grad()
def _nll(model, ids: torch.Tensor) -> float:
    logits = model(input_ids=ids).logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).item()


@torch.no_grad()
def group_sensitivity(model, adapter, spec: SharingSpec, cfg, covs, ids: torch.Tensor, whiten=None) -> float:
    """NLL on ids with spec's single group shared, then the model is restored exactly."""
    from .compress import fill_group

    layers = adapter.decoder_layers(model)
    saved = {(li, p): adapter.get_linear(layers[li], p) for li in spec.groups[0] for p in spec.projections}
    try:
        apply_sharing(model, spec, adapter)
        # no alternating refinement: ranking candidates needs the cheap init only (the final
        # init runs every iteration); this keeps a 30-layer sensitivity sweep to minutes
        fill_group(model, lambda li, p: saved[(li, p)].weight, adapter, spec, 0, cfg, covs, whiten, 0)
        return _nll(model, ids)
    finally:
        for (li, p), lin in saved.items():
            adapter.set_linear(layers[li], p, lin)


def plan_budget(model, cfg, adapter, covs, calib_ids: torch.Tensor, progress: bool = True, whiten=None):
    """Returns (groups, ranks, plan report)."""
    from .compress import build_spec, group_savings

    num_layers = len(adapter.decoder_layers(model))
    gs = cfg.group_size
    total = count_parameters(model)["total"]
    need = (1.0 - cfg.target_params) * total
    # budget mode chooses ranks: start from the configured ones, capped at an eighth of each
    # matrix's smaller side (a delta near full rank saves nothing), then spend the slack below
    layer0 = adapter.decoder_layers(model)[0]
    start = {p: min(cfg.rank_for(p, adapter.kinds[p]), max(1, min(adapter.get_linear(layer0, p).weight.shape) // 8))
             for p in cfg.shared_projections(adapter)}
    base_spec = build_spec(cfg, adapter, [], model, start)
    per_group = group_savings(model, adapter, gs, base_spec.projections, base_spec.ranks, base_spec.gates, base_spec.scaled)
    if per_group <= 0:
        raise ConfigError(f"ranks {base_spec.ranks} are so high that sharing saves nothing; lower rank_attn/rank_mlp")
    max_groups = num_layers // gs
    if max_groups * per_group < need:
        best = 1.0 - max_groups * per_group / total
        raise ConfigError(
            f"target_params {cfg.target_params} cannot be reached: sharing every layer in groups of {gs} at ranks "
            f"{base_spec.ranks} keeps at best {best:.3f} of the parameters (raise the target, lower ranks or enlarge group_size)")

    ids = calib_ids[: min(2, calib_ids.shape[0])]  # sensitivity ranks candidates; 2 sequences suffice
    base_nll = _nll(model, ids)
    candidates = [list(range(s, s + gs)) for s in range(0, num_layers - gs + 1)]
    sens: list[tuple[float, list[int]]] = []  # (NLL increase, group)
    for g in tqdm(candidates, desc="sensitivity", disable=not progress, leave=False):
        spec = SharingSpec([g], base_spec.projections, base_spec.ranks, base_spec.gates, base_spec.scaled)
        sens.append((group_sensitivity(model, adapter, spec, cfg, covs, ids, whiten) - base_nll, g))

    chosen, used = [], set()
    for _, g in sorted(sens, key=lambda t: t[0]):
        if used.isdisjoint(g):
            chosen.append(g)
            used.update(g)
            if len(chosen) * per_group >= need:
                break
    if len(chosen) * per_group < need:
        raise ConfigError(f"target_params {cfg.target_params} cannot be reached with non-overlapping groups of {gs}")
    chosen.sort()
    ranks = _spend_slack(model, adapter, base_spec, len(chosen), gs, need)
    plan = {"mode": "budget", "target_params": cfg.target_params, "base_nll": base_nll,
            "sensitivity": {",".join(map(str, g)): round(d, 4) for d, g in sens}}
    return chosen, ranks, plan


def _spend_slack(model, adapter, spec: SharingSpec, n_groups: int, gs: int, need: float) -> dict[str, int]:
    """Raise all ranks by a common factor while n_groups still save at least `need`."""
    from .compress import group_savings

    best = dict(spec.ranks)
    for step in range(1, 400):
        scale = 1.0 + step * 0.01
        trial = {p: int(round(r * scale)) for p, r in spec.ranks.items()}
        if n_groups * group_savings(model, adapter, gs, spec.projections, trial, spec.gates, spec.scaled) < need:
            break
        best = trial
    return best

