"""The scoring interface every evaluated model plugs into, and its PyTorch implementation.

A `Scorer` answers one question, in batch: for each (context, continuation) pair, what is
log p(continuation | context) under the model, and is the continuation the greedy (argmax)
decode? This is lm-eval-harness's `loglikelihood` request, and it is all the zero-shot tasks
need. A PyTorch model, a compressed edgedelta model and an exported ONNX artifact (through
`edgedelta.runtime`) each only have to implement it; `LogitsScorer` turns any function that
maps padded token ids to logits into a Scorer, so an ONNX session needs ~10 lines.

Tokenisation follows lm-eval exactly (`_encode_pair`): trailing spaces of the context move to
the continuation; context+continuation is encoded jointly and split at len(encode(context)),
so a token that straddles the boundary belongs to the continuation. The model input is
context_ids + continuation_ids, left-truncated to max_length + 1 tokens, minus the last token.
An empty context is replaced by the BOS/EOS token (lm-eval's prefix token).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import ConfigError


@dataclass(frozen=True)
class Request:
    context: str
    continuation: str


class Scorer(Protocol):
    """Batched log-likelihood of continuations given contexts (lm-eval's `loglikelihood`)."""

    def loglikelihood(self, requests: Sequence[Request], progress: bool = False, desc: str = "") -> list[tuple[float, bool]]:
        """For each request, (sum of log-probs of the continuation tokens, greedy match)."""
        ...

    def nll_on_ids(self, ids: torch.Tensor, progress: bool = False) -> tuple[float, int]:
        """Perplexity support: ids (n, T) token windows -> (summed next-token NLL, tokens scored)."""
        ...

    tokenizer: object  # the model's tokenizer (used to encode requests and perplexity text)


# --- tokenisation (shared by all scorers) ------------------------------------------------

def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's `_encode_pair`: (context_ids, continuation_ids), split on the joint encoding."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = _encode(tokenizer, context + continuation)
    ctx = _encode(tokenizer, context)
    if not ctx:  # empty context: condition on the prefix token, as lm-eval does
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        return [prefix], whole
    return ctx, whole[len(ctx):]


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


@dataclass
class _Pack:
    """One model input row: a shared context followed by one or more continuations, each of
    which attends to the context and to itself only (a tree of depth one)."""

    ctx: list[int]
    conts: list[tuple[int, list[int]]]  # (request index, continuation ids)

    @property
    def length(self) -> int:
        return len(self.ctx) + sum(len(c) for _, c in self.conts)


def _make_packs(encoded: list[tuple[list[int], list[int]]], max_length: int, share_context: bool) -> list[_Pack]:
    """Group requests with identical context ids into packs no longer than max_length tokens.
    A request that alone exceeds max_length is left-truncated as lm-eval does."""
    packs: list[_Pack] = []
    by_ctx: dict[tuple[int, ...], _Pack] = {}
    for i, (ctx, cont) in enumerate(encoded):
        full = (ctx + cont)[-(max_length + 1):]
        if len(cont) > max_length:
            raise ConfigError(f"a continuation of {len(cont)} tokens exceeds the model's max_length {max_length}")
        if len(ctx) + len(cont) > max_length + 1:  # truncated: own pack, context = what is left
            packs.append(_Pack(full[: len(full) - len(cont)], [(i, cont)]))
            continue
        key = tuple(ctx)
        p = by_ctx.get(key) if share_context else None
        # the last input token is dropped (it predicts nothing), hence <= max_length + 1
        if p is not None and p.length + len(cont) <= max_length + 1:
            p.conts.append((i, cont))
        else:
            p = _Pack(list(ctx), [(i, cont)])
            packs.append(p)
            by_ctx[key] = p
    return packs


class TorchScorer:
    """Scorer for a PyTorch causal LM (original, compressed, or a baseline).

    Requests that share a context are scored in one row: [ctx | cont_1 | cont_2 | ...] with a
    4-D attention mask in which cont_j sees the context and its own earlier tokens, and
    position ids that restart at len(ctx) for every continuation. This is exact (same logits
    as scoring each pair alone) and roughly halves the tokens of multiple-choice tasks.
    Only the hidden states at continuation positions go through the LM head: (N, vocab)
    instead of (B, T, vocab)."""

    def __init__(self, model, tokenizer, batch_tokens: int = 2048, max_length: int | None = None, share_context: bool = True):
        self.model, self.tokenizer = model, tokenizer
        self.batch_tokens = batch_tokens
        cfg_max = getattr(model.config, "max_position_embeddings", 2048) or 2048
        self.max_length = max_length or min(cfg_max, 2048)
        self.share_context = share_context

    @torch.no_grad()
    def loglikelihood(self, requests: Sequence[Request], progress: bool = False, desc: str = "") -> list[tuple[float, bool]]:
        self.model.eval()
        encoded = [encode_pair(self.tokenizer, r.context, r.continuation) for r in requests]
        packs = _make_packs(encoded, self.max_length, self.share_context)
        packs.sort(key=lambda p: -p.length)  # longest first: similar lengths share a batch, OOM shows early
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        batches = _batches(packs, self.batch_tokens)
        bar = tqdm(total=len(requests), desc=desc or "score", disable=not progress, leave=False, unit="req")
        for batch in batches:
            for idx, res in self._score_batch(batch):
                out[idx] = res
            bar.update(sum(len(p.conts) for p in batch))
        bar.close()
        return out  # type: ignore[return-value]

    def nll_on_ids(self, ids: torch.Tensor, progress: bool = False) -> tuple[float, int]:
        from .perplexity import perplexity_on_ids

        bs = max(1, self.batch_tokens // ids.shape[1])
        r = perplexity_on_ids(self.model, ids, batch_size=bs, progress=progress)
        return r["nll"] * r["tokens"], r["tokens"]

    def _score_batch(self, batch: list[_Pack]):
        device = next(self.model.parameters()).device
        T = max(p.length for p in batch) - 1  # the final token of the row is never an input
        B = len(batch)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((B, T), pad, dtype=torch.long)
        pos = torch.zeros((B, T), dtype=torch.long)
        mask = torch.zeros((B, 1, T, T), dtype=torch.bool)  # True = may attend
        targets = []  # (row, input positions predicting the tokens, token ids, request index)
        for b, p in enumerate(batch):
            Lc = len(p.ctx)
            row = list(p.ctx)
            # context: plain causal attention
            mask[b, 0, :Lc, :Lc] = torch.ones(Lc, Lc, dtype=torch.bool).tril()
            start = Lc
            for idx, cont in p.conts:
                # inputs for this continuation are cont[:-1] (its last token only is a target);
                # cont[0] is predicted from the last context position Lc-1.
                n_in = len(cont) - 1
                seg = slice(start, start + n_in)
                row.extend(cont[:-1])
                pos[b, seg] = torch.arange(Lc, Lc + n_in)
                mask[b, 0, seg, :Lc] = True
                mask[b, 0, seg, seg] = torch.ones(n_in, n_in, dtype=torch.bool).tril()
                predict_from = [Lc - 1] + list(range(start, start + n_in))
                targets.append((b, predict_from, cont, idx))
                start += n_in
            row = row[:T]
            ids[b, : len(row)] = torch.tensor(row, dtype=torch.long)
            pos[b, :Lc] = torch.arange(Lc)
            # padding rows attend to themselves only (an all-False row makes SDPA return NaN)
            for t in range(start, T):
                mask[b, 0, t, t] = True
        rows = torch.cat([torch.full((len(t[1]),), t[0], dtype=torch.long) for t in targets])
        cols = torch.cat([torch.tensor(t[1], dtype=torch.long) for t in targets])
        # additive float mask (0 = attend, dtype min = blocked): eager attention adds it to the
        # scores, SDPA accepts it as is (a bool mask would be added as 0/1 by eager)
        dtype = next(self.model.parameters()).dtype
        add_mask = torch.zeros(mask.shape, dtype=dtype).masked_fill_(~mask, torch.finfo(dtype).min)
        logits = self._logits_at(ids.to(device), pos.to(device), add_mask.to(device), rows.to(device), cols.to(device))  # (N, V)
        logp = torch.log_softmax(logits, dim=-1)
        greedy = logits.argmax(dim=-1).cpu()
        tok = torch.cat([torch.tensor(t[2], dtype=torch.long) for t in targets])
        tok_lp = logp.gather(1, tok.to(device)[:, None])[:, 0].cpu()
        k = 0
        for _, pf, cont, idx in targets:
            n = len(cont)
            yield idx, (float(tok_lp[k : k + n].sum()), bool((greedy[k : k + n] == tok[k : k + n]).all()))
            k += n

    def _logits_at(self, ids, pos, mask, rows, cols) -> torch.Tensor:
        """Logits (N, V) at the (row, position) pairs. The LM head is applied to the gathered
        hidden states only: it is ~20% of a small model's FLOPs and (B, T, V) would not fit."""
        m = self.model
        if hasattr(m, "get_decoder") and m.get_output_embeddings() is not None:
            h = m.get_decoder()(input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=False).last_hidden_state
            return m.get_output_embeddings()(h[rows, cols]).float()
        return m(input_ids=ids, position_ids=pos, attention_mask=mask).logits[rows, cols].float()


def _batches(packs: list[_Pack], batch_tokens: int) -> list[list[_Pack]]:
    """Greedy batches whose padded size (rows x longest row) stays within batch_tokens."""
    out: list[list[_Pack]] = []
    cur: list[_Pack] = []
    for p in packs:  # sorted longest first, so cur[0] is the longest
        longest = cur[0].length if cur else p.length
        if cur and longest * (len(cur) + 1) > batch_tokens:
            out.append(cur)
            cur = []
        cur.append(p)
    if cur:
        out.append(cur)
    return out


class LogitsScorer:
    """Scorer over any `logits_fn(input_ids (B, T) int64, attention_mask (B, T) int64) ->
    logits (B, T, V)` with right padding: the adapter point for an ONNX Runtime session (or
    any backend without custom attention masks). Each request is its own row (no context
    sharing), exactly lm-eval's layout."""

    def __init__(self, logits_fn: Callable[[np.ndarray, np.ndarray], np.ndarray], tokenizer, max_length: int = 2048, batch_size: int = 8):
        self.logits_fn, self.tokenizer = logits_fn, tokenizer
        self.max_length, self.batch_size = max_length, batch_size

    def nll_on_ids(self, ids: torch.Tensor, progress: bool = False) -> tuple[float, int]:
        total, n = 0.0, 0
        # one window a call: (1, T, V) fp32 logits are already ~100 MB for T=512, V=49k
        for s in tqdm(range(ids.shape[0]), desc="ppl", disable=not progress, leave=False):
            x = ids[s : s + 1].numpy().astype(np.int64)
            lg = np.asarray(self.logits_fn(x, np.ones_like(x)), dtype=np.float32)[:, :-1]  # (1, T-1, V)
            lg = lg - lg.max(-1, keepdims=True)
            lp = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
            tgt = x[:, 1:]
            total -= float(np.take_along_axis(lp, tgt[..., None], -1).sum())
            n += tgt.size
        return total, n

    def loglikelihood(self, requests: Sequence[Request], progress: bool = False, desc: str = "") -> list[tuple[float, bool]]:
        encoded = [encode_pair(self.tokenizer, r.context, r.continuation) for r in requests]
        rows = []
        for i, (ctx, cont) in enumerate(encoded):
            full = (ctx + cont)[-(self.max_length + 1):]
            rows.append((i, full[:-1], cont))
        rows.sort(key=lambda r: -len(r[1]))
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        it = range(0, len(rows), self.batch_size)
        for s in tqdm(it, desc=desc or "score", disable=not progress, leave=False):
            chunk = rows[s : s + self.batch_size]
            T = max(len(r[1]) for r in chunk)
            ids = np.full((len(chunk), T), pad, dtype=np.int64)
            am = np.zeros((len(chunk), T), dtype=np.int64)
            for b, (_, inp, _) in enumerate(chunk):
                ids[b, : len(inp)] = inp
                am[b, : len(inp)] = 1
            logits = np.asarray(self.logits_fn(ids, am), dtype=np.float32)  # (B, T, V)
            for b, (i, inp, cont) in enumerate(chunk):
                n = len(cont)
                lg = logits[b, len(inp) - n : len(inp)]  # (n, V): positions predicting cont
                lg = lg - lg.max(-1, keepdims=True)
                lp = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
                tok = np.asarray(cont)
                out[i] = (float(lp[np.arange(n), tok].sum()), bool((lg.argmax(-1) == tok).all()))
        return out  # type: ignore[return-value]
