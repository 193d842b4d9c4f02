"""compress(model, CompressConfig) → a shared-plus-delta copy of the model, and the plan chosen.

One call for every kind of plan; each kind is its own function: sharing only (share.py),
removal then sharing (removal.py, drop_layers = N) and the search over removal counts
(drop_search.py, drop_layers = 'auto'). The input model is never modified."""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .calibration import Calibration
from .config import DROP_AUTO, CompressConfig
from .drop_search import heldout_rows, search_drop_count
from .removal import remove_then_share
from .share import CompressResult, share_layers


def compress(model, cfg: CompressConfig, tokenizer=None, calib_ids: torch.Tensor | None = None, progress: bool = True, *,
             calibration: Calibration | None = None, heldout_ids: torch.Tensor | None = None,
             reuse_weights: bool = False) -> CompressResult:
    """Return a compressed copy of `model` (which is left untouched) and the plan chosen.
    Calibration text: `calib_ids` (n, T), or cfg.calib_text read with `tokenizer`.
    `calibration` instead passes it with measurements made once on `model` (input covariances
    of every layer, block influence), so several configs can be compared on one pass; covs
    cannot be reused with drop_layers (removal changes every later layer's inputs).
    `heldout_ids`: the rows drop_layers='auto' judges each count on (default: heldout_rows).
    `reuse_weights`: the result keeps `model`'s tensors wherever compression leaves them
    unchanged instead of copies (a 1.5B fp32 model: 7 GB less), for a caller that saves the
    result and trains neither it nor `model` in this process (the CLI, the pipeline)."""
    if calibration is not None and calib_ids is not None:
        raise ConfigError("pass calibration text once: calib_ids or calibration, not both")
    if calibration is None:
        calibration = Calibration.draw(cfg, tokenizer, calib_ids) if cfg.needs_calibration else Calibration(calib_ids)
    if cfg.drop_layers == DROP_AUTO:
        held = heldout_rows(cfg, tokenizer) if heldout_ids is None else heldout_ids
        return search_drop_count(model, cfg, calibration, held, progress, reuse_weights)
    if cfg.drop_layers:
        return remove_then_share(model, cfg, calibration, progress, reuse_weights)
    return share_layers(model, cfg, calibration, progress, reuse_weights)


def format_drop_search(search: dict) -> str:
    """One line for plan['drop_search'] (drop_layers='auto'): each count's KL and the count kept."""
    return ("layers removed first, searched (held-out KL to the original): "
            + ", ".join(f"{k}: {v:.4f}" for k, v in search["kl"].items()) + f"; kept {search['chosen']}")


def format_plan(plan: dict) -> str:
    """A few human-readable lines describing the plan (layers in the original model's numbering)."""
    anchors = plan.get("anchors") or [None] * len(plan["groups"])
    src = plan.get("source_layers")
    orig = (lambda li: src[li]) if src else (lambda li: li)
    lines = [f"removed layers ({len(plan['removed_layers'])}): {', '.join(map(str, plan['removed_layers']))}"] if plan.get("removed_layers") else []
    lines += [f"groups ({len(plan['groups'])}): " + " ".join(
                 "[" + ",".join(f"{orig(li)}*" if li == a else str(orig(li)) for li in g) + "]" for g, a in zip(plan["groups"], anchors))
             + ("  (* = anchor: exact, no delta)" if plan.get("anchors") else ""),
             f"shared projections: {', '.join(plan['projections'])}; ranks: " + ", ".join(f"{k}={v}" for k, v in plan["ranks"].items()),
             f"gates: {', '.join(plan['gates']) or 'none'}",
             f"unique parameters: {plan['compressed_params']:,} of {plan['original_params']:,} ({plan['ratio']:.2%})"]
    if "drop_search" in plan:
        lines.append(format_drop_search(plan["drop_search"]))
    if "sensitivity" in plan:
        worst = sorted(plan["sensitivity"].items(), key=lambda kv: -kv[1])[:3]
        lines.append("most sensitive candidates (KL, nats/token): "
                     + ", ".join(f"{','.join(str(orig(int(li))) for li in k.split(','))} {v:.3f}" for k, v in worst))
    return "\n".join(lines)
