"""Text generation on a Session: prompts (optionally through the chat template) -> left-padded
batch -> one prefill -> a decode loop over the KV cache, yielding text as it becomes final.

Streaming and non-streaming share one loop (`_Generation.events`), so both give the same text.
Each row's text comes from row_text.RowText (the server's too): detokenised incrementally and
released only when stable: a trailing U+FFFD (an incomplete UTF-8 byte sequence) and any tail
that could still become a stop string are held back."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable, Iterator

import numpy as np

from edgedelta.errors import ConfigError

from .row_text import RowText
from .sampling import GenerationConfig, Sampler


@dataclass
class GenerationResult:
    """One prompt's output. token_ids include the EOS token when generation ended on it."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str  # "eos" | "stop" | "length"
    ttft_s: float = 0.0  # prefill + first token (shared by the batch)
    decode_s: float = 0.0  # after the first token until the end (shared by the batch)
    batch_decode_tokens: int = 0  # tokens produced by decode steps across the batch

    @property
    def decode_tokens_per_s(self) -> float:
        """Batch decode throughput: tokens after the first, per second of decoding."""
        return self.batch_decode_tokens / self.decode_s if self.decode_s > 0 else 0.0


def encode_prompts(session, prompts: list[str], config: GenerationConfig) -> list[list[int]]:
    """Token ids per prompt; empty prompts are refused; chat=True applies the chat template."""
    tok = session.tokenizer
    if tok is None:
        raise ConfigError("this session was loaded without a tokenizer; pass token ids to generate_ids")
    out = []
    for p in prompts:
        if not isinstance(p, str) or not p.strip():
            raise ConfigError("the prompt is empty")
        if config.chat:
            if not getattr(tok, "chat_template", None):
                raise ConfigError(f"--chat: the tokenizer of '{session.artifact.path}' has no chat template")
            text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            ids = tok(text, add_special_tokens=False)["input_ids"]
        else:
            ids = tok(p)["input_ids"]
        if not ids:
            raise ConfigError("the prompt is empty after tokenisation")
        out.append(list(ids))
    return out


class _Generation:
    """One batched generation. Iterate `events()` for (row, text piece); then read `results`."""

    def __init__(self, session, ids: list[list[int]], config: GenerationConfig,
                 on_first_token: Callable[[], None] | None = None):
        self.s, self.ids, self.c = session, ids, config
        self.on_first_token = on_first_token  # called after prefill + first token (the profiler's phase boundary)
        tok = session.tokenizer
        self.eos = set(session.artifact.eos_token_ids) if config.eos else set()
        if config.eos and tok is not None and tok.eos_token_id is not None:
            self.eos.add(int(tok.eos_token_id))
        pad = tok.pad_token_id if tok is not None and tok.pad_token_id is not None else (session.artifact.config.get("pad_token_id") or 0)
        self.pad = int(pad)
        self.results: list[GenerationResult] = []
        longest = max(len(x) for x in ids)
        limit = session.artifact.max_positions
        if limit and longest + config.max_new_tokens > limit:
            raise ConfigError(f"prompt ({longest} tokens) + max_new_tokens ({config.max_new_tokens}) exceeds the model's "
                              f"maximum of {limit} positions")

    def events(self) -> Iterator[tuple[int, str]]:
        s, c = self.s, self.c
        b, p = len(self.ids), max(len(x) for x in self.ids)
        cache = s.new_cache(b, p + c.max_new_tokens)
        input_ids = np.full((b, p), self.pad, dtype=np.int64)
        mask = np.zeros((b, cache.capacity), dtype=np.int64)  # [B, capacity]; left padding = zeros
        for r, x in enumerate(self.ids):
            input_ids[r, p - len(x):] = x
            mask[r, p - len(x):p] = 1
        pos = np.cumsum(mask[:, :p], axis=1) - 1  # [B, P]; padded slots get a harmless 1 (as HF)
        pos[mask[:, :p] == 0] = 1
        next_pos = pos[:, -1:].copy() + 1  # [B, 1]
        rows = [RowText(s.tokenizer, c.stop) if s.tokenizer is not None else None for _ in range(b)]
        gen: list[list[int]] = [[] for _ in range(b)]
        reason = ["length"] * b
        done = np.zeros(b, dtype=bool)
        sampler = Sampler(c)
        t0 = time.perf_counter()
        chunk = c.prefill_chunk or p
        for start in range(0, p, chunk):  # chunked prefill: same KV cache, only the last chunk's logits are used
            end = min(start + chunk, p)
            logits = s.forward(input_ids[:, start:end], mask[:, :end], pos[:, start:end], cache)
        ttft = t1 = 0.0
        step_ids = np.empty((b, 1), dtype=np.int64)
        for step in range(c.max_new_tokens):
            nxt = sampler(logits)
            if step == 0:
                t1 = time.perf_counter()
                ttft = t1 - t0
                if p > 1:
                    s.release_prefill_buffer(1, b)
                if self.on_first_token is not None:
                    self.on_first_token()
            for r in range(b):
                if done[r]:
                    continue
                t = int(nxt[r])
                gen[r].append(t)
                if t in self.eos:
                    done[r], reason[r] = True, "eos"
                    continue
                if rows[r] is not None:
                    piece = rows[r].push(t)
                    if piece:
                        yield r, piece
                    if rows[r].stopped:
                        done[r], reason[r] = True, "stop"
            if done.all() or step == c.max_new_tokens - 1:
                break
            step_ids[:, 0] = np.where(done, self.pad, nxt)
            mask[:, p + step] = 1
            # a static-decode session takes the mask over the whole cache (zeros ahead), so
            # every step has the same shapes
            logits = s.forward(step_ids, mask if s.full_width_decode else mask[:, :p + step + 1], next_pos, cache)
            next_pos += 1
        t2 = time.perf_counter()
        for r in range(b):
            if rows[r] is not None:
                piece = rows[r].flush()
                if piece:
                    yield r, piece
        n_decode = sum(max(len(g) - 1, 0) for g in gen)
        self.results = [
            GenerationResult(rows[r].text if rows[r] is not None else "", gen[r], len(self.ids[r]), reason[r],
                             ttft, t2 - t1, n_decode)
            for r in range(b)
        ]


def _config(config: GenerationConfig | None, kwargs) -> GenerationConfig:
    config = config or GenerationConfig()
    return replace(config, **kwargs) if kwargs else config


def generate(session, prompts, config: GenerationConfig | None = None,
             on_text: Callable[[int, str], None] | None = None, **kwargs):
    """Generate for a prompt (-> GenerationResult) or a list of prompts (-> list, one batch,
    left-padded). `on_text(row, piece)` is called as text becomes final (streaming callback).
    Keyword arguments override fields of `config` (e.g. max_new_tokens=32)."""
    config = _config(config, kwargs)
    single = isinstance(prompts, str)
    plist = [prompts] if single else list(prompts)
    if not plist:
        raise ConfigError("no prompts given")
    g = _Generation(session, encode_prompts(session, plist, config), config)
    for row, piece in g.events():
        if on_text is not None:
            on_text(row, piece)
    return g.results[0] if single else g.results


def generate_ids(session, ids: list[list[int]], config: GenerationConfig | None = None,
                 on_first_token: Callable[[], None] | None = None, **kwargs) -> list[GenerationResult]:
    """Like generate, from token ids (no tokenizer needed; text is empty without one).
    `on_first_token()` is called once the prefill has produced the first token."""
    config = _config(config, kwargs)
    if not ids or any(len(x) == 0 for x in ids):
        raise ConfigError("every prompt needs at least one token")
    g = _Generation(session, [list(map(int, x)) for x in ids], config, on_first_token)
    for _ in g.events():
        pass
    return g.results


class Stream:
    """Iterator of text pieces for one prompt; `result` holds the GenerationResult afterwards."""

    def __init__(self, session, prompt: str, config: GenerationConfig):
        self._g = _Generation(session, encode_prompts(session, [prompt], config), config)
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[str]:
        for _, piece in self._g.events():
            yield piece
        self.result = self._g.results[0]


def stream(session, prompt: str, config: GenerationConfig | None = None, **kwargs) -> Stream:
    return Stream(session, prompt, _config(config, kwargs))
