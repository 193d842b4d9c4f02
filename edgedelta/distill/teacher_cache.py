"""The teacher's top-k logits per training row, computed once and reused across runs.

With `teacher_topk = k` the logit loss only needs the teacher's k largest logits per token
(values rounded to fp16, token ids as int32: 6k bytes per token, 384 B at k = 64), so a
run with a cache skips the teacher forward entirely. The cache file is keyed by the
teacher's weights, the packed training data and k; it grows as longer runs need more rows.
Live top-k (no cache) uses the same fp16 rounding, so cached and live runs agree."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .checkpoint import CheckpointError


def topk_of(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values fp16, token ids int32), each (..., k), from logits (..., V)."""
    top = logits.float().topk(k, dim=-1)
    return top.values.half(), top.indices.int()


@torch.no_grad()
def teacher_fingerprint(teacher: torch.nn.Module) -> str:
    """Cheap identity of a model's weights: per-tensor sums and absolute sums (float64)."""
    h = hashlib.sha256(json.dumps(teacher.config.to_dict(), sort_keys=True, default=str).encode())
    for name, p in teacher.named_parameters(remove_duplicate=True):
        t = p.detach()  # reduced in float64 without a float64 copy (1.9 GB for a 1.5B model's embedding)
        total, l1 = torch.sum(t, dtype=torch.float64).item(), torch.linalg.vector_norm(t, ord=1, dtype=torch.float64).item()
        h.update(f"{name}:{tuple(t.shape)}:{total:.12e}:{l1:.12e}".encode())
    return h.hexdigest()[:16]


class TopKCache:
    """{row index: (values (T, k) fp16, ids (T, k) int32)} backed by one safetensors file."""

    def __init__(self, folder: str | os.PathLike, teacher_fp: str, data_fp: str, k: int):
        self.k = k
        self.path = Path(folder) / f"teacher-top{k}-{teacher_fp}-{data_fp}.safetensors"
        self.pos: dict[int, int] = {}
        self.values = self.ids = None
        if self.path.is_file():
            try:
                t = load_file(self.path)
                self.values, self.ids = t["values"], t["ids"]
                self.pos = {int(r): i for i, r in enumerate(t["rows"].tolist())}
            except (SafetensorError, OSError, KeyError) as e:
                raise CheckpointError(f"teacher cache '{self.path}' is corrupt ({e}); delete it to rebuild") from None

    def missing(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.tensor([r for r in rows.tolist() if r not in self.pos], dtype=torch.long)

    @torch.no_grad()
    def ensure(self, teacher, data_rows: torch.Tensor, rows: torch.Tensor, batch: int, device, autocast: bool,
               progress: bool = True) -> int:
        """Compute and store the rows of `rows` not cached yet; returns how many were added."""
        todo = self.missing(rows)
        if todo.numel() == 0:
            return 0
        vals, ids = [], []
        amp = torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=autocast)
        for s in tqdm(range(0, todo.numel(), batch), desc=f"teacher top-{self.k}", disable=not progress, leave=False):
            with amp:
                logits = teacher(input_ids=data_rows[todo[s:s + batch]].to(device), use_cache=False).logits
            v, i = topk_of(logits, self.k)
            vals.append(v.cpu())
            ids.append(i.cpu())
        new_v, new_i = torch.cat(vals), torch.cat(ids)
        old_rows = sorted(self.pos, key=self.pos.get)
        self.values = new_v if self.values is None else torch.cat([self.values, new_v])
        self.ids = new_i if self.ids is None else torch.cat([self.ids, new_i])
        all_rows = old_rows + todo.tolist()
        self.pos = {r: i for i, r in enumerate(all_rows)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        save_file({"rows": torch.tensor(all_rows, dtype=torch.long), "values": self.values.contiguous(),
                   "ids": self.ids.contiguous()}, tmp)
        os.replace(tmp, self.path)
        return int(todo.numel())

    def get(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(values (b, T, k), ids (b, T, k)) for row indices idx, or None if any is missing."""
        try:
            p = torch.tensor([self.pos[int(r)] for r in idx.tolist()], dtype=torch.long)
        except KeyError:
            return None
        return self.values[p], self.ids[p]
