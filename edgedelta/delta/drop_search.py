"""drop_layers='auto': how many layers to remove before sharing. Every count is built
(quality is not monotone in it: bench/results/drop_sweep.md, on SmolLM2-135M at 12% 3 is best
and 1, 2, 4 are worse than 0) and the one whose model is closest to the original on held-out
calibration text is kept. Costs one compression per count."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..data.text import calibration_batches
from ..errors import ConfigError
from ..models.adapters import adapter_for
from ..models.similarity import block_influence
from .calibration import Calibration
from .config import DROP_AUTO, CompressConfig
from .plan import SENSITIVITY_SEQUENCES, kl_to, log_probs
from .removal import remove_then_share
from .share import CompressResult, share_layers

# The held-out draw's seed is the calibration seed plus this: other documents and windows than
# the rows the candidates are fitted on (covariances, gates, anchors), so the fit cannot flatter them
HELDOUT_SEED_OFFSET = 7919
ROWS_PER_CHUNK = 4  # held-out rows scored at once: a (4, T, vocab) log-prob tensor per model


@dataclass
class DropCandidate:
    """One count of drop_layers='auto': its compressed model and how close it is to the original.
    result is None when this count cannot be built (`stopped` says why) and no higher count can."""
    count: int
    result: CompressResult | None
    kl: float | None = None  # KL(original || compressed), nats/token, on held-out calibration text
    kl_calibration: float | None = None  # the same on the fitting rows (kept to show the fit's bias)
    nll: float | None = None  # next-token NLL of the compressed model on the held-out rows, nats/token
    stopped: str | None = None


def heldout_rows(cfg: CompressConfig, tokenizer) -> torch.Tensor:
    """cfg.drop_search_samples sequences of cfg.calib_text drawn apart from the calibration rows
    (seed + HELDOUT_SEED_OFFSET), (n, calib_seq_len)."""
    if tokenizer is None:
        raise ConfigError(f"drop_layers '{DROP_AUTO}' judges each count on held-out text: pass a tokenizer or heldout_ids")
    return calibration_batches(tokenizer, cfg.drop_search_samples, cfg.calib_seq_len, cfg.seed + HELDOUT_SEED_OFFSET,
                               cfg.calib_text)


@torch.no_grad()
def _kl_and_nll(ref: list[torch.Tensor], model, ids: torch.Tensor) -> tuple[float, float]:
    """Mean per-token KL(original || model) and model's next-token NLL over ids (n, T), one chunk
    of rows at a time (a full (n, T, vocab) log-prob tensor per model would cost n·T·vocab·4
    bytes twice). ref: the original's log-probs per chunk."""
    kl = nll = 0.0
    for r, i in zip(ref, range(0, len(ids), ROWS_PER_CHUNK)):
        rows = ids[i:i + ROWS_PER_CHUNK]
        logp = log_probs(model, rows)  # (c, T, vocab)
        kl += kl_to(r, logp) * len(rows)
        nll -= float(logp[:, :-1].gather(-1, rows[:, 1:, None].to(logp.device)).mean()) * len(rows)
    return kl / len(ids), nll / len(ids)


def _reference(model, ids: torch.Tensor) -> list[torch.Tensor]:
    return [log_probs(model, ids[i:i + ROWS_PER_CHUNK]) for i in range(0, len(ids), ROWS_PER_CHUNK)]  # (≤4, T, vocab) each


def drop_candidates(model, cfg: CompressConfig, calib: Calibration, heldout_ids: torch.Tensor, progress: bool = True,
                    counts=None, reuse_weights: bool = False):
    """Yield a DropCandidate for 0, 1, 2, ... layers removed first (each the budget built with
    remove_then_share), until removal alone would meet it or cfg.drop_search_max (`counts`:
    only these, ascending, for benchmarks).

    Each count is judged on `heldout_ids` (heldout_rows()): the fitting rows flatter every
    candidate, most those that share more, because deltas and gates are fitted on them. On
    SmolLM2-135M at 25% (bench/results/drop_search.md) held-out rows cut 3 removed's lead over
    8 from 0.21 to 0.06 nats but still keep 3, while evaluation perplexity and healing prefer
    8: the criterion is only as good as the calibration text is like the text the model will see."""
    if calib.covs is not None:
        raise ValueError("precomputed covs cannot be used with drop_layers (removal changes later layers' inputs)")
    fitted = calib.ids[:2 * SENSITIVITY_SEQUENCES]  # the rows the planner judges whole plans on
    ref_held, ref_fitted = _reference(model, heldout_ids), _reference(model, fitted)
    # the original's influence decides which layers go first, for every count
    influence = block_influence(model, calib.ids) if calib.influence is None else calib.influence
    measured = Calibration(calib.ids, influence=influence)
    num_layers = len(adapter_for(model.config).decoder_layers(model))
    most = num_layers - 2 if cfg.drop_search_max is None else min(cfg.drop_search_max, num_layers - 2)
    for count in tqdm(range(most + 1) if counts is None else sorted(counts), desc="drop count", disable=not progress):
        try:
            one = dataclasses.replace(cfg, drop_layers=count)
            res = (remove_then_share(model, one, measured, progress, reuse_weights) if count
                   else share_layers(model, one, measured, progress, reuse_weights))
        except ConfigError as e:
            if count == 0:
                raise
            yield DropCandidate(count, None, stopped=f"{count}: {e}")  # removal alone meets the budget: no higher count either
            return
        kl, nll = _kl_and_nll(ref_held, res.model, heldout_ids)
        yield DropCandidate(count, res, kl=round(kl, 4), kl_calibration=round(_kl_and_nll(ref_fitted, res.model, fitted)[0], 4),
                            nll=round(nll, 4))


def search_drop_count(model, cfg: CompressConfig, calib: Calibration, heldout_ids: torch.Tensor,
                      progress: bool = True, reuse_weights: bool = False) -> CompressResult:
    """The candidate with the lowest held-out KL; its plan records every count's
    (plan['drop_search'])."""
    kls, kls_fit, nlls, stop, best = {}, {}, {}, None, None
    for c in drop_candidates(model, cfg, calib, heldout_ids, progress, reuse_weights=reuse_weights):
        if c.result is None:
            stop = c.stopped
            break
        kls[c.count], kls_fit[c.count], nlls[c.count] = c.kl, c.kl_calibration, c.nll
        if best is None or c.kl < best.kl:
            best = c
    best.result.plan["drop_search"] = {
        "metric": f"KL(original || compressed) nats/token on {len(heldout_ids)} held-out sequences of calibration text",
        "kl": kls, "kl_calibration": kls_fit, "nll": nlls, "chosen": best.count,
        "stopped": stop or "at the last count (drop_search_max or all but two layers)"}
    return best.result
