"""Next-token choice on last-position logits (numpy, one row at a time): greedy, or sampling
with temperature, top-k and top-p (nucleus) from a seeded generator."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgedelta.errors import ConfigError


@dataclass(frozen=True)
class GenerationConfig:
    """How to generate. Greedy unless `do_sample`."""

    max_new_tokens: int = 128  # tokens to generate at most (stops earlier on EOS or a stop string)
    do_sample: bool = False  # False: greedy (argmax); True: sample with the settings below
    temperature: float = 1.0  # > 0; logits are divided by it before softmax
    top_k: int = 0  # keep the k most likely tokens (0: all)
    top_p: float = 1.0  # keep the smallest set whose probability reaches top_p (1.0: all)
    seed: int | None = None  # sampling seed (None: nondeterministic)
    stop: tuple[str, ...] = field(default_factory=tuple)  # stop strings (not included in the output)
    eos: bool = True  # stop at the model's EOS token(s)
    chat: bool = False  # wrap each prompt in the tokenizer's chat template as a user turn
    prefill_chunk: int | None = None  # run the prompt through the model this many tokens at a time (bounds
    # prefill memory: the activations of `chunk` tokens instead of the whole prompt's)

    def __post_init__(self):
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be an integer ≥ 1, got {self.max_new_tokens!r}")
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature!r} (use do_sample=False for greedy)")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ConfigError(f"top_k must be an integer ≥ 0, got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.prefill_chunk is not None and (not isinstance(self.prefill_chunk, int) or self.prefill_chunk < 1):
            raise ConfigError(f"prefill_chunk must be an integer ≥ 1, got {self.prefill_chunk!r}")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ConfigError(f"stop strings must be non-empty strings, got {self.stop!r}")


class Sampler:
    """Chooses one token id per row of logits [B, V]."""

    def __init__(self, config: GenerationConfig):
        self.c = config
        self.rng = np.random.default_rng(config.seed)

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        if not self.c.do_sample:
            return logits.argmax(axis=-1)
        return np.array([self._sample_row(row) for row in logits], dtype=np.int64)

    def _sample_row(self, row: np.ndarray) -> int:
        x = row.astype(np.float64) / self.c.temperature
        k = self.c.top_k
        if 0 < k < x.size:
            cand = np.argpartition(x, -k)[-k:]  # the k largest, unordered
        else:
            cand = np.arange(x.size)
        logit = x[cand]
        order = np.argsort(-logit, kind="stable")
        cand, logit = cand[order], logit[order]
        p = np.exp(logit - logit[0])
        p /= p.sum()
        if self.c.top_p < 1.0:
            # keep tokens until the cumulative probability reaches top_p (at least one)
            keep = int(np.searchsorted(np.cumsum(p), self.c.top_p) + 1)
            cand, p = cand[:keep], p[:keep] / p[:keep].sum()
        return int(cand[self.rng.choice(cand.size, p=p)])
