"""Perplexity of a causal LM on packed text (non-overlapping windows)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.text import pack, tokenize_stream


@torch.no_grad()
def perplexity_on_ids(model, ids: torch.Tensor, batch_size: int = 4, progress: bool = False, desc: str = "ppl") -> dict:
    """ids: (n, seq_len) token windows. Returns {'ppl', 'nll', 'tokens'}."""
    model.eval()
    device = next(model.parameters()).device
    total_nll, total_tok = 0.0, 0
    batches = range(0, ids.shape[0], batch_size)
    for s in tqdm(batches, desc=desc, disable=not progress, leave=False):
        x = ids[s : s + batch_size].to(device)
        logits = model(input_ids=x).logits[:, :-1].float()  # (B, T-1, V)
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
        total_nll += nll.item()
        total_tok += x[:, 1:].numel()
    mean = total_nll / max(total_tok, 1)
    return {"ppl": math.exp(mean), "nll": mean, "tokens": total_tok}


def perplexity_on_texts(model, tokenizer, texts: list[str], seq_len: int = 512, max_tokens: int | None = 32768, **kw) -> dict:
    ids = pack(tokenize_stream(tokenizer, texts), seq_len, max_tokens)
    out = perplexity_on_ids(model, ids, **kw)
    out["seq_len"] = seq_len
    return out
