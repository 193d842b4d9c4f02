"""edgedelta.export: a model directory (plain or DeltaLLM-compressed) → an ONNX artifact
whose shared weights are stored once on disk and read once into RAM.

    from edgedelta.export import ExportConfig, export_onnx, audit
    export_onnx("compressed/", ExportConfig(dtype="fp16"), "artifact/")
"""

from .audit import audit, format_table
from .config import ExportConfig
from .exporter import ARTIFACT_FORMAT, GRAPH_REVISION, ExportError, build_graph, export_onnx, session_config

__all__ = ["ARTIFACT_FORMAT", "ExportConfig", "GRAPH_REVISION", "ExportError", "audit", "build_graph", "export_onnx", "format_table", "session_config"]
