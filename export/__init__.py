"""edgedelta.export: a model directory (plain or DeltaLLM-compressed) → an ONNX artifact
whose shared weights are stored once on disk and read once into RAM.

    from edgedelta.export import ExportConfig, export_onnx, audit
    export_onnx("compressed/", ExportConfig(dtype="fp16"), "artifact/")

The exporter (torch) and the audit (onnx) are imported lazily: the config loads alone, so a
process that only runs an artifact (edgedelta run, serve) never imports the onnx package, and
a device install has no torch (edgedelta/extras.py)."""

from __future__ import annotations

import importlib

from .config import ExportConfig

_EXPORTER = ("ARTIFACT_FORMAT", "GRAPH_REVISION", "ExportError", "build_graph", "export_onnx", "session_config")
_AUDIT = ("audit", "format_table")


def __getattr__(name: str):
    if name in _EXPORTER:
        return getattr(importlib.import_module("edgedelta.export.exporter"), name)
    if name in _AUDIT:
        return getattr(importlib.import_module("edgedelta.export.artifact_audit"), name)
    raise AttributeError(f"module 'edgedelta.export' has no attribute {name!r}")


__all__ = sorted(("ExportConfig",) + _AUDIT + _EXPORTER)
