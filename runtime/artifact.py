"""What an ONNX artifact folder is, read defensively: the manifest (verified), config.json,
the graph's KV-cache interface, and the byte accounting the planner needs (unique weight
bytes; weight bytes *read* per decoded token, where a shared initializer counts once per
consumer because every layer that uses it streams it from memory again).

The graph is parsed with `onnx.load(load_external_data=False)`: only the .onnx protobuf
(a few MB) is read, never the weights. A session does not parse it: the runtime takes the
interface from the ONNX Runtime session it builds, so running an artifact never imports the
onnx package."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from edgedelta.errors import ModelLoadError
from edgedelta.manifest import read_manifest, verify_manifest

MODEL_FILE = "model.onnx"
ARTIFACT_FORMAT = "edgedelta-onnx"

# ONNX TensorProto data type -> bytes per element (the types an LLM graph uses)
_ONNX_DTYPE_BYTES = {1: 4, 2: 1, 3: 1, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 16: 2, 17: 1, 18: 1, 19: 1, 20: 1, 21: 0.5, 22: 0.5}
_ONNX_DTYPE_NAME = {1: "float32", 10: "float16", 16: "bfloat16"}
# ops that only move a weight along (a consumer behind them is the real reader)
_PASS_THROUGH = {"Transpose", "Identity", "Cast", "Reshape", "Unsqueeze", "Squeeze", "DequantizeLinear"}


@dataclass(frozen=True)
class KVSpec:
    """Shape facts of the KV cache: per layer a key and a value of [batch, kv_heads, seq, head_dim]."""

    num_layers: int
    kv_heads: int
    head_dim: int
    dtype: str = "float32"  # numpy dtype name of past_key_values.*
    # per layer: the sliding window W of a layer that attends to its W latest positions, None
    # for a global layer; () when the manifest names none (every layer global)
    windows: tuple[int | None, ...] = ()

    @property
    def itemsize(self) -> int:
        return {"float32": 4, "float16": 2, "bfloat16": 2}[self.dtype]

    def bytes(self, tokens: int, batch: int = 1) -> int:
        """KV bytes for `tokens` cached positions (every layer keeps its own K and V: never shared)."""
        return 2 * self.num_layers * batch * self.kv_heads * tokens * self.head_dim * self.itemsize


@dataclass
class Artifact:
    """An exported model folder. Use `Artifact.open(path)`; `verify=True` checks every checksum."""

    path: Path
    manifest: dict[str, Any]
    config: dict[str, Any]
    generation_config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, path: str | os.PathLike, verify: bool = True) -> "Artifact":
        path = Path(path).expanduser()
        if not path.exists():
            raise ModelLoadError(f"artifact '{path}' does not exist")
        if not path.is_dir():
            raise ModelLoadError(f"artifact '{path}' is not a folder (expected model.onnx, config.json, manifest.json)")
        manifest = read_manifest(path)
        if verify:
            verify_manifest(path, manifest)  # IntegrityError names the bad file
        if not (path / MODEL_FILE).is_file():
            raise ModelLoadError(f"artifact '{path}' has no {MODEL_FILE}")
        config = _read_json(path / "config.json", required=True)
        gen = _read_json(path / "generation_config.json", required=False)
        return cls(path, manifest, config, gen)

    # ---- config facts -------------------------------------------------------------------
    @property
    def model_file(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def max_positions(self) -> int | None:
        v = self.config.get("max_position_embeddings") or self.config.get("n_positions")
        return int(v) if v else None

    @property
    def vocab_size(self) -> int:
        return int(self.config.get("vocab_size") or self.interface["vocab_size"])

    @property
    def eos_token_ids(self) -> list[int]:
        """EOS ids from generation_config.json then config.json (int or list in either)."""
        ids: list[int] = []
        for src in (self.generation_config, self.config):
            v = src.get("eos_token_id")
            for x in v if isinstance(v, list) else [v]:
                if isinstance(x, int) and x not in ids:
                    ids.append(x)
        return ids

    @property
    def name(self) -> str:
        """The manifest's "name", else the folder name (distinguishes original and compressed exports)."""
        return str(self.manifest.get("name") or self.path.name)

    @property
    def ort_session_config(self) -> dict[str, str]:
        """Session config entries the exporter asks loaders to apply (e.g. disable prepacking,
        which would otherwise copy a shared weight once per consuming MatMul)."""
        v = self.manifest.get("ort_session_config")
        if not isinstance(v, dict):
            return {}
        return {str(k): str(x) for k, x in v.items() if str(k).startswith("session.")}

    @property
    def kv_update(self) -> str:
        """'in_place' when the graph may read and write one KV buffer bound to both past and
        present (GroupQueryAttention), else 'concat' (present = past + new)."""
        io = self.manifest.get("io")
        return "in_place" if isinstance(io, dict) and io.get("kv_update") == "in_place" else "concat"

    @property
    def attention(self) -> str:
        """The graph's attention op as the manifest records it: 'GroupQueryAttention' or 'plain'."""
        io = self.manifest.get("io")
        return str(io.get("attention") or "plain") if isinstance(io, dict) else "plain"

    @property
    def is_compressed(self) -> bool:
        """True when the artifact came from a DeltaLLM-compressed model (config has an edgedelta section)."""
        if "edgedelta" in self.config or self.manifest.get("compressed") or self.manifest.get("sharing"):
            return True
        src = self.manifest.get("source")
        return isinstance(src, dict) and src.get("kind") == "compressed"

    # ---- graph facts (parsed once) ----------------------------------------------------------
    @cached_property
    def graph_facts(self) -> dict[str, Any]:
        return graph_facts(self.model_file)

    @cached_property
    def interface(self) -> dict[str, Any]:
        """The graph's KV-cache interface (INTERFACE_KEYS). Session.from_dir sets it from the ORT
        session it built (session_interface); otherwise it is parsed from the graph."""
        return {k: self.graph_facts[k] for k in INTERFACE_KEYS}

    def check_decoder(self) -> None:
        """Quick check, before any session is built, that the graph is a KV-cache decoder: the
        manifest's io section where the exporter wrote one (no graph parsing), else the graph."""
        io = self.manifest.get("io")
        if not isinstance(io, dict) or not isinstance(io.get("inputs"), list) or not isinstance(io.get("outputs"), list):
            self.interface  # parses the graph: ModelLoadError when it is not a decoder
            return
        ins, outs = [str(x) for x in io["inputs"]], [str(x) for x in io["outputs"]]
        if "input_ids" not in ins or not any(x.startswith("past_key_values.") for x in ins) or "logits" not in outs:
            raise ModelLoadError(f"'{self.model_file}' is not a KV-cache decoder graph: its manifest lists inputs {ins} "
                                 f"and outputs {outs} (needs input_ids, past_key_values.* and logits)")

    @property
    def kv(self) -> KVSpec:
        g = self.interface
        windows = ((self.manifest.get("architecture") or {}).get("sliding_windows")) or ()
        if len(windows) != g["num_layers"]:
            windows = ()
        return KVSpec(g["num_layers"], g["kv_heads"], g["head_dim"], g["kv_dtype"], tuple(windows))

    @property
    def unique_weight_bytes(self) -> int:
        """Bytes of weights stored (each shared tensor once): the manifest's accounting when it
        has one (edgedelta.export: bytes.initializers), else the graph's initializers (inline +
        external), else model.onnx.data's size."""
        b = self.manifest.get("bytes")
        if isinstance(b, dict) and isinstance(b.get("initializers"), int) and b["initializers"] > 0:
            return int(b["initializers"])
        for key in ("unique_weight_bytes", "weight_bytes"):
            v = _dig(self.manifest, key)
            if isinstance(v, (int, float)) and v > 0:
                return int(v)
        g = self.graph_facts["unique_initializer_bytes"]
        if g > 0:
            return int(g)
        data = self.path / (MODEL_FILE + ".data")
        return data.stat().st_size if data.is_file() else self.model_file.stat().st_size

    @property
    def weight_bytes_read_per_token(self) -> int:
        """Weight bytes streamed from memory to decode one token (see `graph_facts`)."""
        return int(self.graph_facts["bytes_read_per_token"])


INTERFACE_KEYS = ("inputs", "outputs", "num_layers", "kv_heads", "head_dim", "kv_dtype", "vocab_size", "logits_dtype")
_ORT_TYPE_NAME = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(bfloat16)": "bfloat16"}


def decoder_interface(inputs: list[tuple[str, list[int | None], str]], outputs: list[tuple[str, list[int | None], str]],
                      where: str) -> dict[str, Any]:
    """The KV-cache interface of a decoder graph from its inputs and outputs, each (name, dims
    with None where symbolic, dtype name); ModelLoadError when it is not one. The same facts
    come from the ONNX protobuf (graph_facts) or from a built ORT session (session_interface)."""
    past = [i for i in inputs if i[0].startswith("past_key_values.")]
    if not past or not any(i[0] == "input_ids" for i in inputs):
        raise ModelLoadError(f"'{where}' is not a KV-cache decoder graph (needs input_ids and past_key_values.* inputs)")
    shape = past[0][1]
    if len(shape) != 4 or shape[1] is None or shape[3] is None:
        raise ModelLoadError(f"'{where}': past_key_values have shape {shape}; expected [batch, kv_heads, past_seq, head_dim]")
    logits = next((o for o in outputs if o[0] == "logits"), None)
    if logits is None:
        raise ModelLoadError(f"'{where}' has no 'logits' output")
    return {
        "inputs": [i[0] for i in inputs],
        "outputs": [o[0] for o in outputs],
        "num_layers": len(past) // 2,
        "kv_heads": int(shape[1]),
        "head_dim": int(shape[3]),
        "kv_dtype": past[0][2],
        "vocab_size": logits[1][-1] if logits[1] else None,
        "logits_dtype": logits[2],
    }


def session_interface(ort_session, where: str) -> dict[str, Any]:
    """decoder_interface of a built ONNX Runtime session: what the runtime needs of the graph
    without importing the onnx package (its modules stay out of a server's resident memory)."""
    def args(values) -> list[tuple[str, list[int | None], str]]:
        return [(v.name, [d if isinstance(d, int) and d > 0 else None for d in v.shape], _ORT_TYPE_NAME.get(v.type, "float32"))
                for v in values]

    # an input with a default (an initializer, e.g. logits_to_keep) is listed apart by ORT
    inputs = ort_session.get_inputs() + ort_session.get_overridable_initializers()
    return decoder_interface(args(inputs), args(ort_session.get_outputs()), where)


def _read_json(path: Path, required: bool) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise ModelLoadError(f"artifact '{path.parent}' has no {path.name}")
        return {}
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"'{path}' is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ModelLoadError(f"'{path}' must hold a JSON object")
    return obj


def _dig(obj: Any, key: str) -> Any:
    """First value under `key` anywhere in nested dicts (the exporter's accounting layout may vary)."""
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        for v in obj.values():
            found = _dig(v, key)
            if found is not None:
                return found
    return None


def _tensor_bytes(t) -> int:
    n = 1
    for d in t.dims:
        n *= int(d)
    return int(n * _ONNX_DTYPE_BYTES.get(t.data_type, 4))


def graph_facts(model_file: Path) -> dict[str, Any]:
    """Interface and byte accounting of a decoder graph, without loading its weights.

    bytes_read_per_token: for each initializer, its bytes times the number of compute nodes
    that read it (following Transpose/Cast/... chains, so a weight reached through a
    Transpose still counts at its consumers); a Gather (embedding lookup) reads one row per
    token, not the table. A matrix shared by k layers therefore counts k times: sharing
    saves storage and RAM, not memory traffic."""
    import onnx

    try:
        model = onnx.load(str(model_file), load_external_data=False)
    except Exception as e:  # protobuf decode errors have many types
        raise ModelLoadError(f"cannot parse '{model_file}': {type(e).__name__}: {e}") from None
    g = model.graph
    inputs = {i.name for i in g.input}
    inits = {t.name: t for t in g.initializer if t.name not in inputs}  # an input's default is not a weight
    # node outputs that are constants (Constant nodes) count as weights too
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t is not None:
                    inits[node.output[0]] = a.t
    consumers: dict[str, list] = {}
    for node in g.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def readers(name: str, depth: int = 0) -> list:
        out = []
        for node in consumers.get(name, []):
            if node.op_type in _PASS_THROUGH and depth < 8 and node.input and node.input[0] == name:
                for o in node.output:
                    out.extend(readers(o, depth + 1))
            else:
                out.append(node)
        return out

    unique = 0
    read = 0
    shared = 0
    for name, t in inits.items():
        b = _tensor_bytes(t)
        unique += b
        rs = readers(name)
        if len(rs) > 1:
            shared += 1
        for node in rs:
            if node.op_type == "Gather" and node.input[0] == name:  # embedding lookup: one row per token
                axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                read += b // max(int(t.dims[axis]), 1)
            elif node.op_type == "GroupQueryAttention" and name in node.input[7:9]:  # cos/sin cache: the token's row
                read += b // max(int(t.dims[0]), 1)
            else:
                read += b
    def args(values) -> list[tuple[str, list[int | None], str]]:
        return [(v.name, [d.dim_value or None for d in v.type.tensor_type.shape.dim],
                 _ONNX_DTYPE_NAME.get(v.type.tensor_type.elem_type, "float32")) for v in values]

    return {
        **decoder_interface(args(g.input), args(g.output), str(model_file)),
        "unique_initializer_bytes": unique,
        "bytes_read_per_token": read,
        "shared_initializers": shared,
        "num_initializers": len(inits),
    }
