"""The check a quantized artifact must pass: what a user feels, not raw logits.

Two numbers on held-out text (python-docs and sotu-recent, never calibration text), each
measured with the artifact exactly as it runs (its accuracy level included) against the float
PyTorch model it came from:

  ppl_ratio   held-out perplexity of the artifact / of the float model
  agreement   fraction of positions where the artifact's argmax equals the float model's
              argmax under teacher forcing (both read the same text), over >= 256 tokens

Both come from the same forward passes over non-overlapping windows. A raw-logit bound is
the wrong test here: int8 activations (accuracy level 4) move logits by 2-3 on SmolLM2 while
perplexity moves by about a percent (bench/results/quant_quality.json)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from edgedelta.errors import ParityError

GATE_TEXTS = ("python-docs", "sotu-recent")  # edgedelta.data.text.EVAL_DATASETS: disjoint from calibration text
GATE_SEQ_LEN = 512
# Thresholds per weight bits: a broken export (wrong layout, a lost scale) lands far outside them,
# a sound one inside. On SmolLM2-135M the default int4 and int8 exports (gptq, block 32, the
# quantized tied embedding/LM head, int8 activations) in either zero-point form land inside with
# a margin, and onnxruntime-genai's int4 and int8 builds inside too (bench/results/peers.json:
# each export's parity.quality_gate under `exports`; the peers' perplexity under `perplexity`).
MAX_PPL_RATIO = {8: 1.05, 4: 1.35}
MIN_AGREEMENT = {8: 0.90, 4: 0.70}

LogitsFn = Callable[[np.ndarray], np.ndarray]  # ids (1, T) int64 -> logits (1, T, V) float32


@dataclass(frozen=True)
class GateThresholds:
    max_ppl_ratio: float
    min_agreement: float

    @classmethod
    def for_bits(cls, bits: int, max_ppl_ratio: float | None = None, min_agreement: float | None = None) -> "GateThresholds":
        return cls(MAX_PPL_RATIO[bits] if max_ppl_ratio is None else max_ppl_ratio,
                   MIN_AGREEMENT[bits] if min_agreement is None else min_agreement)


def held_out_windows(tokenizer, tokens_per_text: int, seq_len: int = GATE_SEQ_LEN) -> dict[str, np.ndarray]:
    """{text set: (n, seq_len) int64} — the first tokens_per_text tokens of each held-out set
    (at least one window; a window shorter than seq_len when tokens_per_text is)."""
    from edgedelta.data.text import dataset_texts, pack, tokenize_stream

    seq = min(seq_len, tokens_per_text)
    return {name: pack(tokenize_stream(tokenizer, dataset_texts(name)), seq, tokens_per_text).numpy()
            for name in GATE_TEXTS}


def compare(reference: LogitsFn, candidate: LogitsFn, windows: dict[str, np.ndarray]) -> dict:
    """Per text set and overall: float and candidate perplexity, their ratio, and argmax
    agreement (teacher forcing: both predict every next token of the same text)."""
    per, tot = {}, np.zeros(4)  # nll_ref, nll_cand, agree, tokens
    for name, ids in windows.items():
        acc = np.zeros(4)
        for row in ids:
            x = row[None].astype(np.int64)  # (1, T)
            r, c = reference(x)[0, :-1], candidate(x)[0, :-1]  # (T-1, V) predictions of tokens 1..T-1
            y = row[1:]
            acc += (_nll(r, y), _nll(c, y), float((r.argmax(-1) == c.argmax(-1)).sum()), len(y))
        per[name] = _summary(acc)
        tot += acc
    return {"texts": per, **_summary(tot)}


def _nll(logits: np.ndarray, y: np.ndarray) -> float:
    """Σ −log softmax(logits)[y], logits (T, V) in float64 for a stable sum."""
    z = logits.astype(np.float64)
    m = z.max(-1, keepdims=True)
    lse = (m[:, 0] + np.log(np.exp(z - m).sum(-1)))
    return float((lse - z[np.arange(len(y)), y]).sum())


def _summary(acc: np.ndarray) -> dict:
    n = max(acc[3], 1.0)
    ppl_r, ppl_c = math.exp(acc[0] / n), math.exp(acc[1] / n)
    return {"ppl_float": ppl_r, "ppl_artifact": ppl_c, "ppl_ratio": ppl_c / ppl_r, "agreement": float(acc[2] / n), "tokens": int(acc[3])}


# the ParityError outputs of a missed gate threshold (any other ParityError is a logits mismatch)
GATE_MEASURES = ("held_out_perplexity_ratio", "greedy_agreement")


def judge(result: dict, thresholds: GateThresholds) -> dict:
    """Adds the thresholds and the verdict to `result`; ParityError naming the failed measure."""
    result = {**result, "thresholds": asdict(thresholds), "texts_used": list(GATE_TEXTS)}
    err = None
    if not result["ppl_ratio"] <= thresholds.max_ppl_ratio:  # also catches NaN
        err = ParityError(GATE_MEASURES[0], result["ppl_ratio"], thresholds.max_ppl_ratio,
                          f"float {result['ppl_float']:.3f} -> artifact {result['ppl_artifact']:.3f} on {', '.join(GATE_TEXTS)}")
    elif not result["agreement"] >= thresholds.min_agreement:
        err = ParityError(GATE_MEASURES[1], 1.0 - result["agreement"], 1.0 - thresholds.min_agreement,
                          f"argmax agreement {result['agreement']:.3f} < {thresholds.min_agreement} over {result['tokens']} "
                          "held-out tokens (the values compared are disagreement fractions)")
    if err is not None:
        err.gate = {**result, "passed": False}  # what the exporter's symmetric 'auto' records of a rejected form
        raise err
    return {**result, "passed": True}
