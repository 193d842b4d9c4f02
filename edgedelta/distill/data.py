"""Training data for recovery: packed fixed-length sequences and a deterministic order.

The order is a pure function of (seed, step): epoch e is a permutation drawn from a
generator seeded with (seed, e); step s takes the next `batch_size` rows of the endless
concatenation of epochs. A resumed run therefore sees exactly the rows the uninterrupted
run would have seen, and DDP processes split each global batch without talking."""

from __future__ import annotations

import hashlib

import torch

from ..data.text import pack, tokenize_stream
from ..errors import ConfigError


def fingerprint(rows: torch.Tensor) -> str:
    """sha256 (first 16 hex) of the packed token ids: a resumed run must see the same data."""
    return hashlib.sha256(rows.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()[:16]


class TrainData:
    """rows: (n, seq_len) token ids. `global_rows(step, B)` -> (B,) row indices."""

    def __init__(self, rows: torch.Tensor, seed: int = 0):
        if rows.ndim != 2 or rows.shape[0] < 1:
            raise ConfigError(f"training data must be (n, seq_len) with n >= 1, got {tuple(rows.shape)}")
        self.rows, self.seed = rows, seed
        self._perms: dict[int, torch.Tensor] = {}

    @classmethod
    def from_texts(cls, tokenizer, texts: list[str], seq_len: int, seed: int = 0) -> "TrainData":
        return cls(pack(tokenize_stream(tokenizer, texts), seq_len), seed)

    @property
    def num_rows(self) -> int:
        return self.rows.shape[0]

    @property
    def seq_len(self) -> int:
        return self.rows.shape[1]

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 7919 + epoch)
            self._perms = {epoch: torch.randperm(self.num_rows, generator=g)}  # keep one epoch
        return self._perms[epoch]

    def global_rows(self, step: int, batch_size: int) -> torch.Tensor:
        """Row indices of the global batch of optimizer step `step`, (batch_size,)."""
        out = []
        for k in range(step * batch_size, (step + 1) * batch_size):
            epoch, pos = divmod(k, self.num_rows)
            out.append(int(self._perm(epoch)[pos]))
        return torch.tensor(out, dtype=torch.long)

    def micro_indices(self, step: int, batch_size: int, grad_accum: int, rank: int = 0, world: int = 1) -> list[torch.Tensor]:
        """Row indices of this process's micro-batches of step `step`: grad_accum tensors of
        batch_size / (world * grad_accum) indices."""
        per = batch_size // (world * grad_accum)
        if per < 1 or batch_size % (world * grad_accum):
            raise ConfigError(f"batch_size {batch_size} cannot be split over {world} process(es) x {grad_accum} accumulation steps")
        idx = self.global_rows(step, batch_size)
        mine = idx[rank * per * grad_accum:(rank + 1) * per * grad_accum]
        return [mine[a * per:(a + 1) * per] for a in range(grad_accum)]

    def rows_used(self, steps: int, batch_size: int) -> torch.Tensor:
        """Sorted unique row indices that `steps` optimizer steps will read."""
        return torch.unique(torch.cat([self.global_rows(s, batch_size) for s in range(steps)]))
