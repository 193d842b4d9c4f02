"""Distillation losses. Every loss is a mean over tokens, so micro-batches and processes
with equal token counts average to the global-batch loss exactly."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kl_logits(teacher: torch.Tensor, student: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) per token, averaged; logits (B, T, V). Scaled by T^2 so the
    gradient magnitude does not depend on the temperature (Hinton et al.)."""
    t = temperature
    log_p_t = F.log_softmax(teacher.float() / t, dim=-1)
    log_p_s = F.log_softmax(student.float() / t, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)  # (B, T)
    return kl.mean() * t * t


def kl_topk(top_values: torch.Tensor, top_index: torch.Tensor, student: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Sparse KD: KL between the teacher's distribution renormalised over its top-k tokens
    and the student's full-vocabulary distribution at those tokens.
    top_values, top_index: (B, T, k) teacher logits and token ids; student: (B, T, V)."""
    t = temperature
    log_p_t = F.log_softmax(top_values.float() / t, dim=-1)  # (B, T, k), renormalised over top-k
    log_p_s = F.log_softmax(student.float() / t, dim=-1).gather(-1, top_index.long())  # (B, T, k)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
    return kl.mean() * t * t


def hidden_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """MSE normalised by the teacher's mean square (scale-free across layers); (B, T, H)."""
    teacher = teacher.float()
    return F.mse_loss(student.float(), teacher) / teacher.pow(2).mean().clamp_min(1e-12)


def lm_loss(student: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy; student (B, T, V), ids (B, T)."""
    logits = student[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
