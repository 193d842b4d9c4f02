"""Held-out perplexity and KL to the float model, for the benchmarks that put quantized
weights into a float model (quant_sensitivity.py, scale_tuning.py): the same windows, the same
scoring, one pass per row."""

from __future__ import annotations

import math

import numpy as np


def held_out_batches(tokenizer, tokens_per_text: int, batch: int, window: int = 512) -> tuple[dict, list]:
    """({text: (n, window) ids}, [(text, (≤batch, window) ids)]): every held-out text set cut into
    windows, and those windows in batches, in one fixed order."""
    from edgedelta.data.text import EVAL_DATASETS, dataset_texts, pack, tokenize_stream

    windows = {n: pack(tokenize_stream(tokenizer, dataset_texts(n)), window, tokens_per_text) for n in EVAL_DATASETS}
    return windows, [(n, ids[s : s + batch]) for n, ids in windows.items() for s in range(0, ids.shape[0], batch)]


def evaluate(model, batches: list, reference: list | None = None, weights: dict | None = None) -> tuple[dict, float, list]:
    """Held-out perplexity per text (and their mean) and the mean KL(float ‖ this model) per
    scored position (every position after a window's first), in one pass. weights: parameter
    name -> tensor put in place of the model's own for this pass (torch.func.functional_call).
    Without a reference (the float model's own pass) it returns the log-probabilities instead:
    fp16, one (B, window - 1, V) tensor per batch."""
    import torch
    from torch.func import functional_call

    texts = dict.fromkeys(n for n, _ in batches)
    nll, tokens = dict.fromkeys(texts, 0.0), dict.fromkeys(texts, 0)
    kl_sum, logps = 0.0, []
    with torch.no_grad():
        for b, (name, x) in enumerate(batches):
            out = model(input_ids=x) if weights is None else functional_call(model, weights, (), {"input_ids": x})
            logp = torch.log_softmax(out.logits[:, :-1].float(), -1)  # (B, window - 1, V)
            nll[name] -= logp.gather(-1, x[:, 1:, None]).sum().item()
            tokens[name] += x[:, 1:].numel()
            if reference is None:
                logps.append(logp.half())
            else:
                ref = reference[b].float()
                kl_sum += (ref.exp() * (ref - logp)).sum().item()
    ppl = {n: math.exp(nll[n] / tokens[n]) for n in texts}
    return {**ppl, "mean": float(np.mean(list(ppl.values())))}, kl_sum / sum(tokens.values()), logps
