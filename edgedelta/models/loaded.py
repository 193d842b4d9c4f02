"""A loaded model (weights, tokenizer, where they came from) and the tokenizer loader every
kind of model directory uses: plain ones (loading.py) and compressed ones (delta/storage.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..hf_tokenizer import load_hf_tokenizer


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    path: Path  # the HF-style directory the weights came from
    source: dict = field(default_factory=dict)  # {"kind": "default"|"hf"|"gguf"|"compressed", "path": ..., ...}


def load_tokenizer(path: Path):
    return load_hf_tokenizer(path)
