"""Per-item scores to task metrics, with lm-eval-harness's definitions:
acc = argmax of summed log-likelihood is the gold choice; acc_norm = argmax of
log-likelihood divided by the choice's character length; stderr = sample standard
deviation / sqrt(n) (lm-eval's `mean_stderr`); LAMBADA acc = the whole last word is the
greedy decode, perplexity = exp(-mean log-likelihood of the last word)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def mean_stderr(values: Sequence[float]) -> float:
    """Standard error of the mean with the sample (n-1) standard deviation; 0 for n < 2."""
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        return 0.0
    return float(x.std(ddof=1) / math.sqrt(x.size))


def multiple_choice(lls: Sequence[Sequence[float]], golds: Sequence[int], norm_chars: Sequence[Sequence[int]]) -> dict:
    """lls[i][j]: log-likelihood of choice j of item i. Returns acc, acc_norm and stderrs."""
    acc, acc_norm = [], []
    for ll, gold, chars in zip(lls, golds, norm_chars):
        ll = np.asarray(ll, dtype=np.float64)
        acc.append(float(int(np.argmax(ll)) == gold))  # ties: first choice, as np.argmax in lm-eval
        acc_norm.append(float(int(np.argmax(ll / np.maximum(np.asarray(chars, dtype=np.float64), 1))) == gold))
    return {
        "acc": float(np.mean(acc)), "acc_stderr": mean_stderr(acc),
        "acc_norm": float(np.mean(acc_norm)), "acc_norm_stderr": mean_stderr(acc_norm),
    }


def greedy_last_word(results: Sequence[tuple[float, bool]]) -> dict:
    """LAMBADA: results[i] = (log-likelihood of the last word, whole word is greedy)."""
    hits = [float(g) for _, g in results]
    lls = [ll for ll, _ in results]
    return {
        "acc": float(np.mean(hits)), "acc_stderr": mean_stderr(hits),
        "ppl": float(math.exp(-np.mean(lls))),
    }
