"""What can be evaluated, and how it is turned into a Scorer: a PyTorch model (`default`, a
Hugging Face directory, a GGUF file, an edgedelta compressed directory) or an exported ONNX
artifact (a folder with model.onnx), run through `edgedelta.runtime.Session` so the quality of
what is shipped is measured, not assumed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ModelLoadError
from .scoring import LogitsScorer, TorchScorer

ONNX_FILE = "model.onnx"


def is_onnx_artifact(spec: str) -> bool:
    return Path(spec).is_dir() and (Path(spec) / ONNX_FILE).is_file()


def runtime_logits_fn(session):
    """logits_fn(ids (B, T), attention_mask (B, T)) -> logits (B, T, V) over a runtime Session:
    one prefill with an empty KV cache sized T, `forward(..., all_logits=True)`."""

    def fn(ids: np.ndarray, am: np.ndarray) -> np.ndarray:
        b, t = ids.shape
        cache = session.new_cache(b, t)
        pos = np.clip(np.cumsum(am, axis=1) - 1, 0, None).astype(np.int64)  # right padding: 0..len-1
        full = np.array(session.forward(ids, am, pos, cache, all_logits=True), copy=True)  # the buffer is reused
        session.release_prefill_buffer()
        return full

    return fn


def scorer_for(spec: str, batch_tokens: int = 2048, provider: str = "auto"):
    """(scorer, source facts) for a model spec; ModelLoadError if it is not a model."""
    if is_onnx_artifact(spec):
        try:
            from ..runtime import Session
        except ImportError as e:
            raise ModelLoadError(f"'{spec}' is an ONNX artifact but edgedelta.runtime is unavailable: {e}") from None
        sess = Session.from_dir(spec, provider=provider)
        if sess.tokenizer is None:
            raise ModelLoadError(f"ONNX artifact '{spec}' has no tokenizer")
        max_len = min(sess.artifact.max_positions or 2048, 2048)
        scorer = LogitsScorer(runtime_logits_fn(sess), sess.tokenizer, max_length=max_len, batch_size=4)
        return scorer, {"kind": "onnx", "path": str(Path(spec).resolve()), "provider": sess.provider}
    from ..loading import load_model

    lm = load_model(spec)
    return TorchScorer(lm.model, lm.tokenizer, batch_tokens=batch_tokens), dict(lm.source)
