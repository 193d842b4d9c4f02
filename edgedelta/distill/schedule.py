"""Replacement schedules (BERT-of-Theseus): the probability that each compressed layer
replaces its original at a given step, and the per-step sample.

Sampling is a pure function of (seed, step): every process of a DDP run draws the same
mask (same graph everywhere) and a resumed run draws exactly what the uninterrupted one did.

Kinds
- plain:      p = 1 for every layer from step 0 (ordinary distillation of the compressed model)
- constant:   p = p0 until the end of the ramp, then 1 (Theseus' constant replacement rate)
- linear:     p = p0 + (1 - p0) * t / ramp for every layer (Theseus' linear curriculum)
- curriculum: layers ramp one after another, each over ramp / n steps, in `order`
              (deep-first: the last compressed layer becomes permanent first)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError


@dataclass(frozen=True)
class ReplacementSchedule:
    kind: str
    num_layers: int  # number of replaceable (compressed) layers
    total_steps: int
    p0: float = 0.5
    ramp_frac: float = 0.5
    order: str = "deep-first"
    seed: int = 0

    def __post_init__(self):
        if self.kind not in ("plain", "constant", "linear", "curriculum"):
            raise ConfigError(f"unknown replacement schedule '{self.kind}'")
        if self.num_layers < 1 or self.total_steps < 1:
            raise ConfigError(f"schedule needs >= 1 layer and step, got {self.num_layers}, {self.total_steps}")

    @property
    def ramp_steps(self) -> float:
        return self.ramp_frac * self.total_steps

    def probabilities(self, step: int) -> torch.Tensor:
        """(num_layers,) probability that layer j (in compressed-layer order) is compressed."""
        n, r = self.num_layers, self.ramp_steps
        if self.kind == "plain" or r <= 0 or step >= r:
            return torch.ones(n)
        t = step / r  # progress through the ramp, in [0, 1)
        if self.kind == "constant":
            return torch.full((n,), float(self.p0))
        if self.kind == "linear":
            return torch.full((n,), self.p0 + (1 - self.p0) * t)
        # curriculum: position k in the ramp order ramps during [k/n, (k+1)/n) of the ramp
        rank = torch.arange(n, dtype=torch.float32)
        if self.order == "deep-first":
            rank = rank.flip(0)
        local = (t * n - rank).clamp(0.0, 1.0)
        return self.p0 + (1 - self.p0) * local

    def sample(self, step: int) -> torch.Tensor:
        """(num_layers,) bool: which compressed layers are active at `step` (deterministic)."""
        p = self.probabilities(step)
        if bool((p >= 1).all()):
            return torch.ones(self.num_layers, dtype=torch.bool)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return torch.rand(self.num_layers, generator=g) < p

    def mean_p(self, step: int) -> float:
        return float(self.probabilities(step).mean())
