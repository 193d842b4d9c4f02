"""The sharing audit of an ONNX artifact, read from the graph and the data file only:

- every initializer: dtype, shape, bytes, consumers (nodes reading it), kind (by name),
  sha256 of its bytes;
- duplication: initializers with identical bytes (a constant tensor, e.g. a zero delta
  that has not been trained yet, is reported but not counted as duplication);
- copies at load: any initializer read by Transpose/Cast/Identity/Reshape, which ONNX
  Runtime would constant-fold into a private copy;
- data file bytes vs the bytes its initializers need (alignment padding)."""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from edgedelta.errors import ModelLoadError

MODEL_FILE = "model.onnx"
# ops that would turn a weight into a folded copy at session start
COPY_OPS = {"Transpose", "Cast", "Identity", "Reshape", "Unsqueeze", "Squeeze", "Expand", "Tile"}
_ITEMSIZE = {TensorProto.FLOAT: 4, TensorProto.FLOAT16: 2, TensorProto.BFLOAT16: 2, TensorProto.UINT8: 1,
             TensorProto.INT8: 1, TensorProto.INT64: 8, TensorProto.INT32: 4, TensorProto.BOOL: 1}


def kind_of(name: str) -> str:
    """Kind of an initializer from its (stable) name."""
    if name.startswith("shared."):
        return "shared"
    for suffix, kind in ((".delta_A", "delta"), (".delta_B", "delta"), (".scale", "gate"), (".bias", "bias")):
        if name.endswith(suffix):
            return kind
    if "norm" in name:
        return "norm"
    if name.startswith("embed_tokens"):
        return "embedding"
    if name.startswith("lm_head"):
        return "lm_head"
    if name.startswith("layers."):
        return "projection"
    return "other"


def _group_name(name: str) -> str:
    """Quantized tensors travel in twos or threes: report them under the weight's name."""
    for suffix in (".scales", ".zero_points"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _tensor_bytes(t: onnx.TensorProto, folder: Path, data: dict) -> np.ndarray:
    """The tensor's stored bytes as a uint8 array (a view into the memory-mapped data file)."""
    if t.data_location == TensorProto.EXTERNAL:
        info = {e.key: e.value for e in t.external_data}
        loc = info["location"]
        if loc not in data:
            path = (folder / loc).resolve()
            if folder.resolve() not in path.parents:
                raise ModelLoadError(f"initializer '{t.name}' points outside the artifact: '{loc}'")
            data[loc] = np.memmap(path, dtype=np.uint8, mode="r") if path.stat().st_size else np.zeros(0, np.uint8)
        off, length = int(info.get("offset", 0)), int(info["length"])
        buf = data[loc]
        if off + length > buf.shape[0]:
            raise ModelLoadError(f"initializer '{t.name}' lies beyond the end of '{loc}' (truncated data file)")
        return buf[off : off + length]
    return np.frombuffer(numpy_helper.to_array(t).tobytes(), np.uint8)


def audit(artifact_dir: str | os.PathLike) -> dict[str, Any]:
    """Audit `artifact_dir` (a folder with model.onnx [+ model.onnx.data]); returns a JSON-able dict."""
    folder = Path(artifact_dir)
    path = folder / MODEL_FILE
    if not path.is_file():
        raise ModelLoadError(f"'{folder}' is not an ONNX artifact: no {MODEL_FILE}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf decode errors have many types
        raise ModelLoadError(f"cannot parse '{path}': {type(e).__name__}: {e}") from None
    graph = model.graph
    consumers: dict[str, list[str]] = defaultdict(list)
    for node in graph.node:
        for inp in set(node.input):
            consumers[inp].append(node.op_type)
    data: dict = {}
    rows, by_hash = [], defaultdict(list)
    inputs = {i.name for i in graph.input}
    for t in graph.initializer:
        if t.name in inputs:  # the default of an optional input (logits_to_keep), not a weight
            continue
        raw = _tensor_bytes(t, folder, data)
        digest = hashlib.sha256(raw).hexdigest()
        itemsize = _ITEMSIZE.get(t.data_type, 1)
        constant = len(raw) <= itemsize or bool((raw.reshape(-1, itemsize) == raw[:itemsize]).all())
        rows.append({
            "name": t.name, "kind": kind_of(_group_name(t.name)), "dtype": TensorProto.DataType.Name(t.data_type).lower(),
            "shape": list(t.dims), "bytes": len(raw), "external": t.data_location == TensorProto.EXTERNAL,
            "consumers": len(consumers.get(t.name, [])), "consumer_ops": sorted(set(consumers.get(t.name, []))),
            "sha256": digest, "constant_valued": bool(constant),
        })
        by_hash[digest].append(t.name)
    del data  # close the memory maps
    duplicates = [names for names in by_hash.values() if len(names) > 1]
    by_name = {r["name"]: r for r in rows}
    real_dups = [names for names in duplicates if not by_name[names[0]]["constant_valued"]]
    copy_ops = [{"name": r["name"], "ops": sorted(set(r["consumer_ops"]) & COPY_OPS)} for r in rows if set(r["consumer_ops"]) & COPY_OPS]
    unused = [r["name"] for r in rows if r["consumers"] == 0]
    data_path = folder / (MODEL_FILE + ".data")
    data_bytes = data_path.stat().st_size if data_path.is_file() else 0
    init_bytes = sum(r["bytes"] for r in rows)
    ext_bytes = sum(r["bytes"] for r in rows if r["external"])

    def total(kind):
        return sum(r["bytes"] for r in rows if r["kind"] == kind)

    shared = defaultdict(lambda: {"bytes": 0, "consumers": 0})
    for r in rows:
        if r["kind"] == "shared":
            s = shared[_group_name(r["name"])]
            s["bytes"] += r["bytes"]
            s["consumers"] = max(s["consumers"], r["consumers"])
    tied = [r["name"] for r in rows if r["kind"] == "embedding" and "Gather" in r["consumer_ops"]
            and {"Gemm", "FusedMatMul", "MatMul"} & set(r["consumer_ops"])]
    return {
        "initializers": rows,
        "num_initializers": len(rows),
        "initializer_bytes": init_bytes,  # every distinct tensor once
        "external_bytes": ext_bytes,
        "data_file_bytes": data_bytes,
        "data_padding_bytes": data_bytes - ext_bytes,
        "model_file_bytes": path.stat().st_size,
        "bytes_by_kind": {k: total(k) for k in sorted({r["kind"] for r in rows})},
        "shared": {name: dict(v) for name, v in sorted(shared.items())},
        "tied_embedding": tied[0] if tied else None,
        "delta_bytes": total("delta"),
        "duplicates": real_dups,
        "duplicated_bytes": sum(by_name[n[0]]["bytes"] * (len(n) - 1) for n in real_dups),
        "constant_duplicates": [names for names in duplicates if by_name[names[0]]["constant_valued"]],
        "weights_through_copy_ops": copy_ops,
        "unused_initializers": unused,
        "ok": not real_dups and not copy_ops and not unused,
    }


def audit_problems(report: dict[str, Any]) -> list[str]:
    """Human-readable reasons an audit is not clean (empty list = clean)."""
    out = []
    if report["duplicates"]:
        out.append(f"duplicated weights ({report['duplicated_bytes']} bytes): {report['duplicates'][:3]}")
    if report["weights_through_copy_ops"]:
        out.append(f"weights read through copy ops: {report['weights_through_copy_ops'][:3]}")
    if report["unused_initializers"]:
        out.append(f"unused initializers: {report['unused_initializers'][:3]}")
    return out


def format_table(report: dict[str, Any], max_rows: int = 40) -> str:
    """The audit as a text table: totals, then shared initializers and their consumers."""
    mb = 1 / 1e6
    lines = [
        f"initializers        {report['num_initializers']}  ({report['initializer_bytes'] * mb:.2f} MB, every distinct tensor once)",
        f"data file           {report['data_file_bytes'] * mb:.2f} MB  (padding {report['data_padding_bytes'] * mb:.3f} MB)",
        f"model file          {report['model_file_bytes'] * mb:.3f} MB",
        f"tied embedding      {report['tied_embedding'] or 'no'}",
        f"delta bytes         {report['delta_bytes'] * mb:.3f} MB",
        f"duplicated weights  {len(report['duplicates'])} groups, {report['duplicated_bytes'] * mb:.3f} MB"
        + (f"  (+{len(report['constant_duplicates'])} constant-valued, e.g. untrained zero deltas)" if report["constant_duplicates"] else ""),
        f"copies at load      {len(report['weights_through_copy_ops'])} weights behind Transpose/Cast/Identity/Reshape",
        "",
        "bytes by kind:",
    ]
    lines += [f"  {k:<12} {v * mb:10.3f} MB" for k, v in report["bytes_by_kind"].items()]
    if report["shared"]:
        lines += ["", f"{'shared initializer':<48} {'MB':>9} {'consumers':>9}"]
        items = list(report["shared"].items())
        for name, s in items[:max_rows]:
            lines.append(f"{name:<48} {s['bytes'] * mb:9.3f} {s['consumers']:>9}")
        if len(items) > max_rows:
            lines.append(f"... {len(items) - max_rows} more")
    lines.append("")
    lines.append("audit: OK" if report["ok"] else "audit: PROBLEMS: " + "; ".join(audit_problems(report)))
    return "\n".join(lines)
