"""load_model: every kind of model a command takes, in one call. It sits above edgedelta.models
(built-in names, GGUF files, Hugging Face directories) and edgedelta.delta (compressed
directories, whose loader builds on the model adapters), so neither package imports the other
in both directions."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .models.loaded import LoadedModel
from .models.loading import is_compressed_dir, load_source_model


def load_model(spec: str | os.PathLike = "default", dtype=torch.float32) -> LoadedModel:
    """A built-in model by name ('default', 'qwen2.5-coder-0.5b', ...: models/registry.py), a GGUF
    file, a Hugging Face directory or an edgedelta compressed directory."""
    path = Path(str(spec)).expanduser()
    if path.is_dir() and is_compressed_dir(path):
        from .delta.storage import load_compressed

        return load_compressed(path, dtype)
    return load_source_model(spec, dtype)
