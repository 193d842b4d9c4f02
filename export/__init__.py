"""edgedelta.export: a model directory (plain or DeltaLLM-compressed) → an ONNX artifact
whose shared weights are stored once on disk and read once into RAM.

    from edgedelta.export import ExportConfig, export_onnx, audit
    export_onnx("compressed/", ExportConfig(dtype="fp16"), "artifact/")

The exporter (torch) is imported lazily: the config and the audit (onnx) load on a device
install, which has no torch (edgedelta/extras.py)."""

from __future__ import annotations

import importlib

from .audit import audit, format_table
from .config import ExportConfig

_EXPORTER = ("ARTIFACT_FORMAT", "GRAPH_REVISION", "ExportError", "build_graph", "export_onnx", "session_config")


def __getattr__(name: str):
    if name in _EXPORTER:
        return getattr(importlib.import_module("edgedelta.export.exporter"), name)
    raise AttributeError(f"module 'edgedelta.export' has no attribute {name!r}")


__all__ = sorted(("ExportConfig", "audit", "format_table") + _EXPORTER)
