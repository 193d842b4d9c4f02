"""A loaded model (weights, tokenizer, where they came from) and the tokenizer loader every
kind of model directory uses: plain ones (loading.py) and compressed ones (delta/storage.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ModelLoadError


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    path: Path  # the HF-style directory the weights came from
    source: dict = field(default_factory=dict)  # {"kind": "default"|"hf"|"gguf"|"compressed", "path": ..., ...}


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise ModelLoadError(f"'{path}' has no tokenizer (tokenizer.json, tokenizer.model or vocab.json)")
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as e:
        raise ModelLoadError(f"cannot load the tokenizer in '{path}': {type(e).__name__}: {e}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
