"""Removal before sharing (CompressConfig.drop_layers = N): the N whole layers with the lowest
block influence go first (never one of the explicit groups'), then share.share_layers shares
within what is left. Explicit groups count the original layers; the result's spec counts the
compressed model's and maps them back (spec.source_layers)."""

from __future__ import annotations

import dataclasses

from ..errors import ConfigError
from ..models.adapters import adapter_for
from ..models.similarity import block_influence
from ..models.surgery import copy_model, remove_layers
from .accounting import count_parameters
from .calibration import Calibration
from .config import CompressConfig
from .share import CompressResult, share_layers


def remove_then_share(model, cfg: CompressConfig, calib: Calibration, progress: bool = True,
                      reuse_weights: bool = False) -> CompressResult:
    """Remove cfg.drop_layers layers of `model` (a copy: the input is untouched), then share.
    calib.influence, when given, is the original model's block influence on calib.ids; the
    reduced model's own influence (for anchors) is measured afresh."""
    if calib.covs is not None:
        raise ValueError("precomputed covs cannot be used with drop_layers (removal changes later layers' inputs)")
    adapter = adapter_for(model.config)
    num_layers = len(adapter.decoder_layers(model))
    original = count_parameters(model)["total"]
    explicit = cfg.resolve_groups(num_layers) if cfg.target_params is None else []
    grouped = {li for g in explicit for li in g}
    influence = block_influence(model, calib.ids) if calib.influence is None else calib.influence
    candidates = sorted((li for li in range(num_layers) if li not in grouped), key=lambda li: influence[li])
    most = len(candidates) if grouped else num_layers - 2  # budget mode: two layers must stay to share
    if cfg.drop_layers > most:
        raise ConfigError(f"drop_layers {cfg.drop_layers} is too many: at most {most} of the {num_layers} layers can go "
                          + ("(the others are in sharing groups)" if grouped else "(two must stay to share)"))
    drop = sorted(candidates[:cfg.drop_layers])
    kept_layers = sorted(set(range(num_layers)) - set(drop))
    reduced = remove_layers(copy_model(model, reuse_weights), drop)
    kept = count_parameters(reduced)["total"]
    if cfg.target_params is not None:
        fraction = cfg.target_params * original / kept  # of the reduced model, for the sharing plan
        if fraction >= 1.0:
            raise ConfigError(f"removing {cfg.drop_layers} layers alone keeps {kept / original:.3f} of the parameters, already "
                              f"within target_params {cfg.target_params}: lower drop_layers")
        inner = dataclasses.replace(cfg, drop_layers=0, target_params=fraction)
    else:
        renumber = {li: j for j, li in enumerate(kept_layers)}
        inner = dataclasses.replace(cfg, drop_layers=0, layer_range=None, groups=[[renumber[li] for li in g] for g in explicit])
    res = share_layers(reduced, inner, Calibration(calib.ids), progress=progress, reuse_weights=reuse_weights)
    res.spec.source_layers = kept_layers  # the same object the model carries
    res.plan.update({
        "target_params": cfg.target_params, "sharing_target_params": inner.target_params,
        "removed_layers": drop, "removed_block_influence": [round(influence[li], 5) for li in drop],
        "source_layers": kept_layers, "original_params": original, "ratio": res.plan["compressed_params"] / original,
    })
    return res
