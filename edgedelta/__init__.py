"""edgedelta: DeltaLLM compression (shared base + per-layer low-rank deltas), recovery by
distillation, quality evaluation, ONNX export with shared weights stored once, an ONNX
Runtime wrapper and a per-device planner.

Heavy submodules are imported lazily: `import edgedelta` does not import torch."""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "CompressConfig": "edgedelta.delta.config",
    "compress": "edgedelta.delta.compress",
    "load_model": "edgedelta.loading",
    "save_compressed": "edgedelta.delta.storage",
    "load_compressed": "edgedelta.delta.storage",
    "merge_model": "edgedelta.delta.structure",
    "count_parameters": "edgedelta.delta.accounting",
    "DistillConfig": "edgedelta.distill.config",
    "distill": "edgedelta.distill.api",
    "evaluate": "edgedelta.evaluation.api",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgedelta' has no attribute {name!r}")


__all__ = sorted(_LAZY) + ["__version__"]
