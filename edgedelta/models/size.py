"""How many parameters a source model stores, read from file headers only (milliseconds, no
tensor data): a GGUF's tensor infos or a folder's safetensors headers. The pipeline scales its
time estimate with it before any weight loads."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from ..errors import EdgeDeltaError
from .gguf_header import gguf_parameter_count
from .install import gguf_path, is_installed
from .registry import get_builtin, is_builtin_name


def safetensors_parameter_count(path: Path) -> int:
    """Elements in one safetensors file: its header is a u64 length, then JSON naming each
    tensor's dtype, shape and byte range."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")


def stored_parameters(spec: str) -> int | None:
    """Parameters stored by a built-in model (when installed), a .gguf file or a model folder
    with *.safetensors; None when there is nothing to read them from."""
    try:
        if is_builtin_name(spec) and not Path(spec).exists():
            model = get_builtin(spec)
            return gguf_parameter_count(gguf_path(model)) if is_installed(model) else None
        p = Path(spec).expanduser()
        if p.suffix == ".gguf" and p.is_file():
            return gguf_parameter_count(p)
        files = sorted(p.glob("*.safetensors")) if p.is_dir() else []
        return sum(safetensors_parameter_count(f) for f in files) or None
    except (OSError, ValueError, KeyError, struct.error, EdgeDeltaError):  # unreadable: no estimate, the load reports it
        return None
