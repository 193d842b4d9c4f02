"""DeltaLinear: one layer's projection in a sharing group, W_l ≈ W_shared + B_l·A_l.

The shared base is the *same* nn.Parameter object in every layer of the group, so it is
stored, trained and exported once. The delta stays two small matrices and the forward never
materialises W_shared + B·A (that would cost a full matrix per layer)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DeltaLinear(nn.Module):
    """y = gate · (α·x·Wᵀ + (x·Aᵀ)·Bᵀ) + bias

    weight: (out, in)  shared Parameter (same object across the group)
    delta_A: (r, in), delta_B: (out, r)  this layer's low-rank delta (r may be 0)
    bias: (out,) or None  this layer's own bias (never shared)
    gate: scalar or None  ReZero-style output gate; lets a poorly approximated layer start
          near "skipped" and grow in during recovery (exported as one Mul).
    base_scale: scalar α or None  this layer's scale on the shared base. Adjacent layers are
          nearly uncorrelated, so W_l − W_shared can be larger than W_l itself; a least-squares
          α lets a layer use as much of the base as actually helps (α = 1 is plain DeltaLLM).
    """

    def __init__(self, weight: nn.Parameter, rank: int, bias: torch.Tensor | None = None, gate: bool = False,
                 base_scale: bool = False):
        super().__init__()
        out_features, in_features = weight.shape
        if not 0 <= rank <= min(out_features, in_features):
            raise ValueError(f"rank {rank} is outside 0..{min(out_features, in_features)} for a {out_features}x{in_features} matrix")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.weight = weight  # shared: registering the same Parameter in several modules is fine
        kw = dict(dtype=weight.dtype, device=weight.device)
        self.delta_A = nn.Parameter(torch.zeros(rank, in_features, **kw))
        self.delta_B = nn.Parameter(torch.zeros(out_features, rank, **kw))
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        self.gate = nn.Parameter(torch.ones((), **kw)) if gate else None
        self.base_scale = nn.Parameter(torch.ones((), **kw)) if base_scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., in)
        y = F.linear(x, self.weight)  # (..., out)
        if self.base_scale is not None:
            y = y * self.base_scale
        if self.rank:
            y = y + F.linear(F.linear(x, self.delta_A), self.delta_B)  # (..., r) -> (..., out)
        if self.gate is not None:
            y = y * self.gate
        if self.bias is not None:
            y = y + self.bias
        return y

    def get_delta_weight(self) -> torch.Tensor:
        """B·A, shape (out, in)."""
        return self.delta_B @ self.delta_A

    def effective_weight(self) -> torch.Tensor:
        """The full (out, in) weight this layer applies (gate folded in)."""
        w = self.weight * self.base_scale if self.base_scale is not None else self.weight
        w = w + (self.get_delta_weight() if self.rank else 0)
        return w * self.gate if self.gate is not None else w

    def to_linear(self) -> nn.Linear:
        """A plain, unshared nn.Linear computing the same function (for `merge`/interop)."""
        with torch.no_grad():
            w = self.effective_weight()
            if not torch.isfinite(w).all():
                raise ValueError("merged weight has non-finite values")
            lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, dtype=w.dtype, device=w.device)
            lin.weight.copy_(w)
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, rank={self.rank}, gate={self.gate is not None}, "
                f"base_scale={self.base_scale is not None}")
