"""Per-item scores to task metrics, with lm-eval-harness's definitions:
acc = argmax of summed log-likelihood is the gold choice; acc_norm = argmax of
log-likelihood divided by the choice's character length; stderr = sample standard
deviation / sqrt(n) (lm-eval's `mean_stderr`); LAMBADA acc = the whole last word is the
greedy decode, perplexity = exp(-mean log-likelihood of the last word). Each metric also
comes per item under "per_item" (0/1 in item order), for paired comparisons of two models
scored on the same items."""

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
        "per_item": {"acc": [int(a) for a in acc], "acc_norm": [int(a) for a in acc_norm]},
    }


def greedy_last_word(results: Sequence[tuple[float, bool]]) -> dict:
    """LAMBADA: results[i] = (log-likelihood of the last word, whole word is greedy)."""
    hits = [float(g) for _, g in results]
    lls = [ll for ll, _ in results]
    return {
        "acc": float(np.mean(hits)), "acc_stderr": mean_stderr(hits),
        "ppl": float(math.exp(-np.mean(lls))),
        "per_item": {"acc": [int(h) for h in hits]},
    }


def paired_difference(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]]) -> tuple[float, float]:
    """Mean over tasks of each task's mean per-item difference a - b, and its standard error,
    sqrt(sum_t var(a_t - b_t) / n_t) / k (tasks on independent items). a[t], b[t]: one task's
    0/1 scores on the same items in the same order. Pairing removes the items' own difficulty,
    so this stderr is far below that of a difference of two unpaired averages."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_difference needs the same tasks on both sides, got {len(a)} and {len(b)}")
    means, var = [], 0.0
    for x, y in zip(a, b):
        if len(x) != len(y) or not x:
            raise ValueError(f"paired_difference needs the same items on both sides, got {len(x)} and {len(y)}")
        d = np.asarray(x, dtype=np.float64) - np.asarray(y, dtype=np.float64)
        means.append(float(d.mean()))
        var += mean_stderr(d) ** 2
    return float(np.mean(means)), math.sqrt(var) / len(means)
