"""One sharing group: its structure (which projections share, at what rank, which layer is
the exact anchor), the unique parameters it saves, and its values computed from the original
weights (init.py). Both the budget planner (plan.py), which tries single groups, and the
builder of a whole plan (share.py) use these."""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ..models.adapters import ModelAdapter
from .calibration import WhiteningCache
from .config import CompressConfig
from .init import init_group
from .structure import SharingSpec
from .sublayer_gates import GATED_PROJECTIONS


def build_spec(cfg: CompressConfig, adapter: ModelAdapter, groups: list[list[int]], model, ranks: dict[str, int] | None = None,
               influence: list[float] | None = None) -> SharingSpec:
    """The structure for `groups`. `influence` (block influence per layer) picks each group's
    anchor when cfg.base is "anchor"."""
    projections = list(cfg.shared_projections(adapter))
    layer0 = adapter.decoder_layers(model)[0]
    ranks = dict(ranks) if ranks else {p: cfg.rank_for(p, adapter.kinds[p]) for p in projections}
    for p in projections:
        out_f, in_f = adapter.get_linear(layer0, p).weight.shape
        if ranks[p] > min(out_f, in_f):
            raise ConfigError(f"rank {ranks[p]} for projection '{p}' exceeds what a {out_f}x{in_f} matrix allows (max {min(out_f, in_f)})")
    gates = [p for p in projections if p in GATED_PROJECTIONS] if cfg.gates else []
    scaled = list(projections) if cfg.scale_base else []
    return SharingSpec(groups=groups, projections=projections, ranks=ranks, gates=gates, scaled=scaled,
                       anchors=choose_anchors(cfg.base, groups, influence))


def choose_anchors(base: str, groups: list[list[int]], influence: list[float] | None) -> list[int] | None:
    """Per group, the layer that stays exact: the first, or the one with the highest block
    influence (the layer that changes the residual stream most is the costliest to approximate)."""
    if base == "first":
        return [g[0] for g in groups]
    if base == "anchor":
        if influence is None:
            raise ConfigError("base 'anchor' needs the block influence of each layer (calibration text)")
        return [max(g, key=lambda li: influence[li]) for g in groups]
    return None


def group_savings(model, adapter: ModelAdapter, group_len: int, projections, ranks: dict[str, int], gates, scaled=(),
                  anchored: bool = False) -> int:
    """Unique parameters saved by sharing one group of `group_len` layers (`anchored`: one of
    them is the base itself and has no delta)."""
    layer0 = adapter.decoder_layers(model)[0]
    with_delta = group_len - 1 if anchored else group_len
    saved = 0
    for p in projections:
        out_f, in_f = adapter.get_linear(layer0, p).weight.shape
        saved += (group_len - 1) * out_f * in_f - with_delta * ranks[p] * (out_f + in_f) - (group_len if p in gates else 0)
        saved -= group_len if p in scaled else 0
    return saved


@torch.no_grad()
def fill_group(student, original_weight, adapter: ModelAdapter, spec: SharingSpec, gi: int, cfg: CompressConfig, covs,
               whiten: WhiteningCache | None = None, base_iters: int | None = None) -> dict:
    """Compute and write the values of group `gi` into `student` (structure already applied).
    original_weight(layer, proj) -> the uncompressed (out, in) weight. Gates are left at 1
    (fit_sublayer_gates sets them once every group has its values)."""
    dst_layers = adapter.decoder_layers(student)
    group = spec.groups[gi]
    out = {}
    for proj in spec.projections:
        ws = [original_weight(li, proj) for li in group]
        cs = [covs[(li, proj)] for li in group] if covs is not None else None
        iters = cfg.base_iters if base_iters is None else base_iters
        anchor = group.index(spec.anchors[gi]) if spec.anchors is not None else None
        res = init_group(ws, cs, spec.ranks[proj], cfg.base, cfg.init, iters, cfg.damping, whiten,
                         scale_base=proj in spec.scaled, anchor=anchor)
        dls = [adapter.get_linear(dst_layers[li], proj) for li in group]
        dls[0].weight.copy_(res.base.to(dls[0].weight.dtype))  # the one shared Parameter
        for k, dl in enumerate(dls):
            b, a = res.deltas[k]
            dl.delta_B.copy_(b.to(dl.delta_B.dtype))
            dl.delta_A.copy_(a.to(dl.delta_A.dtype))
            if dl.gate is not None:
                dl.gate.fill_(1.0)
            if dl.base_scale is not None:
                dl.base_scale.fill_(res.alphas[k])
        out[proj] = {"rel_error": [round(e, 4) for e in res.rel_errors]}
        if res.alphas:
            out[proj]["base_scale"] = [round(a, 4) for a in res.alphas]
    return out
