"""Equal-token healing for the baselines: logit-KL distillation from the original model into a
LoRA (delta/lora.py) on every remaining linear projection, merged back afterwards (so the
unique-parameter count is unchanged). The DeltaLLM model is healed by `edgedelta.distill` with the same number
of tokens; this gives the pruned baselines the same chance (DESIGN.md: "removal healed with a
matched LoRA").

Rank: chosen so the LoRA's trainable parameters are close to a given count (the delta
model's trainable deltas), capped by the matrix sizes."""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..delta.lora import add_layer_lora, merge_lora
from ..distill.spike_guard import SpikeGuard
from ..errors import ConfigError
from ..models.adapters import adapter_for


def _linears(model: nn.Module):
    adapter = adapter_for(model.config)
    for layer in adapter.decoder_layers(model):
        for proj in adapter.projections:
            try:
                lin = adapter.get_linear(layer, proj)
            except AttributeError:  # a dropped sub-layer (JointDrop)
                continue
            if isinstance(lin, nn.Linear):
                yield adapter, layer, proj, lin


def rank_for_budget(model: nn.Module, trainable_params: int) -> int:
    """The LoRA rank whose parameter count is closest to `trainable_params` (>= 1)."""
    per_rank = sum(lin.in_features + lin.out_features for *_, lin in _linears(model))
    return max(1, round(trainable_params / max(per_rank, 1)))


def heal(student: nn.Module, teacher: nn.Module, rows: torch.Tensor, rank: int = 8, lr: float = 3e-4,
         batch_size: int = 4, temperature: float = 1.0, progress: bool = True, seed: int = 0) -> dict:
    """In place: train LoRA adapters on `student` to match `teacher`'s logits on `rows`
    ((n, seq_len) token ids, the same rows every method gets), then merge them. The LoRA init
    comes from `seed` alone, not the global RNG: the same call heals to the same weights.
    A loss spike is rolled back at half the learning rate, as in distillation (spike_guard.py).
    Returns {tokens, steps, seconds, final_kl, rank, trainable_params, losses (per step), rollbacks}."""
    if rows.ndim != 2 or rows.shape[0] < 1:
        raise ConfigError(f"healing rows must be (n, seq_len) token ids, got shape {tuple(rows.shape)}")
    device = next(student.parameters()).device
    for p in student.parameters():
        p.requires_grad_(False)
    loras = add_layer_lora(student, rank, torch.Generator().manual_seed(seed))
    params = [p for *_, lora in loras for p in (lora.A, lora.B)]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    steps = math.ceil(rows.shape[0] / batch_size)
    guard = SpikeGuard(params, opt)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: guard.lr_scale * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / max(steps, 1)))))
    teacher.eval()
    student.train()
    t0, kl, losses = time.time(), float("nan"), []
    for s in tqdm(range(steps), desc="heal", disable=not progress, leave=False):
        x = rows[s * batch_size : (s + 1) * batch_size].to(device)
        with torch.no_grad():
            t_logits = teacher(input_ids=x).logits.float() / temperature  # (B, T, V)
        s_logits = student(input_ids=x, use_cache=False).logits.float() / temperature
        loss = F.kl_div(F.log_softmax(s_logits, -1), F.log_softmax(t_logits, -1), log_target=True, reduction="batchmean") / x.shape[1]
        loss = loss * temperature**2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        kl = float(loss.detach())
        losses.append(round(kl, 4))
        guard.after_step(s + 1, kl, 1.0)
        sched.step()
    student.eval()
    try:
        merge_lora(student)
    except ValueError as e:
        raise ConfigError(f"healing diverged: {e}; lower the learning rate") from None
    for p in student.parameters():
        p.requires_grad_(False)
    return {"tokens": int(rows.numel()), "steps": steps, "seconds": round(time.time() - t0, 1), "final_kl": kl,
            "rank": rank, "trainable_params": sum(p.numel() for p in params),
            "losses": losses, "rollbacks": guard.rollbacks}
