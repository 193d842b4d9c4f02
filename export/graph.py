"""A small ONNX graph builder: nodes with stable, scoped names; each initializer added
exactly once under a readable name; saved with external data written deterministically.

Weights never pass through a Transpose/Cast/Identity node: callers hand in arrays already
in the layout and dtype their consumer reads, so ONNX Runtime has nothing to constant-fold
into a private copy of a (shared) weight."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MS_DOMAIN = "com.microsoft"
# Tensors at least this large go to model.onnx.data; smaller ones (scalars, inv_freq) stay inline.
EXTERNAL_THRESHOLD = 1024
# Offsets in the data file: a tensor of 64 KiB or more starts on a page, so ONNX Runtime can
# memory-map it; smaller ones (norms, scales of small matrices) are read into memory anyway
# and start on a cache line, which saves the page padding (0.86 MB of an 81 MB int4 file).
DATA_ALIGNMENT = 4096
PAGE_ALIGNED_MIN_BYTES = 65536
SMALL_ALIGNMENT = 64

NP_TO_ONNX = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16,
              np.dtype(np.int64): TensorProto.INT64, np.dtype(np.uint8): TensorProto.UINT8,
              np.dtype(np.int32): TensorProto.INT32, np.dtype(np.bool_): TensorProto.BOOL}


class GraphBuilder:
    """Collects nodes, initializers, inputs and outputs of one graph."""

    def __init__(self, name: str, opset: int):
        self.name, self.opset = name, opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, np.ndarray] = {}  # name -> array, insertion ordered
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._scope: list[str] = []
        self._counts: dict[str, int] = {}
        self._consts: dict[tuple, str] = {}
        self.uses_ms_domain = False

    # --- naming ----------------------------------------------------------------------
    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator[None]:
        self._scope.append(name)
        try:
            yield
        finally:
            self._scope.pop()

    def _unique(self, base: str) -> str:
        prefix = "/" + "/".join(self._scope) + "/" if self._scope else "/"
        key = prefix + base
        n = self._counts.get(key, 0)
        self._counts[key] = n + 1
        return key if n == 0 else f"{key}_{n}"

    # --- graph pieces ----------------------------------------------------------------
    def initializer(self, name: str, array: np.ndarray) -> str:
        """Add a weight once. Adding the same name twice is a bug (it would duplicate bytes)."""
        if name in self.initializers:
            raise ValueError(f"initializer '{name}' added twice")
        self.initializers[name] = np.ascontiguousarray(array)
        return name

    def const(self, value, dtype=np.int64) -> str:
        """A small constant (shape vectors, scalars) as a Constant node, shared by value."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            out = f"const_{len(self._consts)}"
            self.nodes.append(helper.make_node("Constant", [], [out], name=f"/const/{out}",
                                               value=numpy_helper.from_array(arr, out)))
            self._consts[key] = out
        return self._consts[key]

    def op(self, op_type: str, inputs: Sequence[str], n_out: int = 1, domain: str = "", name: str | None = None,
           outputs: Sequence[str] | None = None, **attrs):
        """Append a node; returns its output name (or a list of names when n_out > 1).
        `outputs` names the outputs (a graph output is produced by its node directly: an
        Identity in between would cost a copy of e.g. the (B, S, vocab) logits); a None entry
        gets the automatic name."""
        node_name = self._unique(name or op_type)
        outs = [o or f"{node_name}/output_{i}" for i, o in enumerate(outputs or [None] * n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=node_name, domain=domain or None, **attrs))
        if domain == MS_DOMAIN:
            self.uses_ms_domain = True
        return outs[0] if n_out == 1 else outs

    def add_input(self, name: str, elem_type: int, shape: Sequence) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        return name

    def add_output(self, name: str, elem_type: int, shape: Sequence) -> None:
        """Declare graph output `name` (a node must produce it: `op(..., outputs=[name])`)."""
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))

    # --- serialisation -----------------------------------------------------------------
    def to_model(self, data_file: str, producer: str, metadata: dict[str, str] | None = None) -> tuple[onnx.ModelProto, list[tuple[int, np.ndarray]]]:
        """The ModelProto with large initializers pointing into `data_file`, and the
        (offset, array) chunks to write there. Offsets are deterministic (insertion order)."""
        inits, chunks, offset = [], [], 0
        for name, arr in self.initializers.items():
            if arr.nbytes < EXTERNAL_THRESHOLD:
                t = numpy_helper.from_array(arr, name)
            else:
                t = TensorProto(name=name, data_type=NP_TO_ONNX[arr.dtype], dims=arr.shape, data_location=TensorProto.EXTERNAL)
                align = DATA_ALIGNMENT if arr.nbytes >= PAGE_ALIGNED_MIN_BYTES else SMALL_ALIGNMENT
                offset = -(-offset // align) * align
                for k, v in (("location", data_file), ("offset", str(offset)), ("length", str(arr.nbytes))):
                    entry = t.external_data.add()
                    entry.key, entry.value = k, v
                chunks.append((offset, arr))
                offset += arr.nbytes
            inits.append(t)
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, inits)
        opsets = [helper.make_opsetid("", self.opset)]
        if self.uses_ms_domain:
            opsets.append(helper.make_opsetid(MS_DOMAIN, 1))
        model = helper.make_model(graph, opset_imports=opsets, producer_name=producer, producer_version="1")
        model.ir_version = min(onnx.IR_VERSION, 10)
        for k, v in sorted((metadata or {}).items()):
            entry = model.metadata_props.add()
            entry.key, entry.value = k, v
        return model, chunks

    def save(self, folder: str | os.PathLike, model_file: str = "model.onnx", producer: str = "edgedelta", metadata: dict[str, str] | None = None) -> Path:
        """Write model.onnx and model.onnx.data into `folder`. Returns the model path."""
        folder = Path(folder)
        data_file = model_file + ".data"
        model, chunks = self.to_model(data_file, producer, metadata)
        with open(folder / data_file, "wb") as f:
            for offset, arr in chunks:
                f.write(b"\0" * (offset - f.tell()))
                f.write(arr.tobytes())
        (folder / model_file).write_bytes(model.SerializeToString(deterministic=True))
        return folder / model_file
