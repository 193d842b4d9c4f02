"""The architecture of a GGUF file, read from its header: the key-value section before the
tensor data (`general.architecture` is written first by llama.cpp and gguf-py). Reading it
takes milliseconds, so an unsupported model is refused before transformers dequantises any
tensor (tens of seconds for a 1.5B model). Layout (gguf-py's constants):
magic "GGUF", version u32, tensor count u64, key-value count u64, then per pair a string key
(u64 length + UTF-8), a u32 value type and the value; arrays are (u32 type, u64 count, items).
The tensor infos follow: per tensor its name (string), u32 dimension count, u64 dimensions, u32
ggml type and u64 data offset, so the parameter count is read without touching tensor data."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

from gguf import GGUF_MAGIC, GGUFValueType

from ..errors import ModelLoadError

ARCH_KEY = "general.architecture"
# GGUF architecture -> transformers model_type where transformers 4.57 renames it on load
# (modeling_gguf_pytorch_utils.load_gguf_checkpoint)
MODEL_TYPE_OF_GGUF_ARCH = {"gemma3": "gemma3_text", "qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe"}
_SCALAR = {GGUFValueType.UINT8: "B", GGUFValueType.INT8: "b", GGUFValueType.UINT16: "H", GGUFValueType.INT16: "h",
           GGUFValueType.UINT32: "I", GGUFValueType.INT32: "i", GGUFValueType.FLOAT32: "f", GGUFValueType.BOOL: "?",
           GGUFValueType.UINT64: "Q", GGUFValueType.INT64: "q", GGUFValueType.FLOAT64: "d"}


class _Header:
    def __init__(self, f: BinaryIO, path: Path):
        self.f, self.path, self.order = f, path, "<"

    def read(self, fmt: str):
        size = struct.calcsize(fmt)
        data = self.f.read(size)
        if len(data) != size:
            raise ModelLoadError(f"GGUF file '{self.path}' is truncated in its header")
        return struct.unpack(self.order + fmt, data)[0]

    def string(self) -> str:
        n = self.read("Q")
        data = self.f.read(n)
        if len(data) != n:
            raise ModelLoadError(f"GGUF file '{self.path}' is truncated in its header")
        return data.decode("utf-8", errors="replace")

    def skip(self, vtype: int) -> None:
        if vtype == GGUFValueType.STRING:
            self.f.seek(self.read("Q"), 1)
        elif vtype == GGUFValueType.ARRAY:
            inner, count = self.read("I"), self.read("Q")
            if inner in _SCALAR:  # fixed size: one seek
                self.f.seek(count * struct.calcsize(_SCALAR[inner]), 1)
            else:
                for _ in range(count):
                    self.skip(inner)
        elif vtype in _SCALAR:
            self.read(_SCALAR[vtype])
        else:
            raise ModelLoadError(f"GGUF file '{self.path}' has an unknown value type {vtype} in its header")

    def start(self) -> int:
        """Check the magic and version; returns the tensor count (the key-value count is next)."""
        if self.read("I") != GGUF_MAGIC:
            raise ModelLoadError(f"'{self.path}' is not a GGUF file (no GGUF magic at its start)")
        version = self.read("I")
        if version > 0xFFFF:  # written big-endian
            self.order, version = ">", struct.unpack(">I", struct.pack("<I", version))[0]
        if version < 2:
            raise ModelLoadError(f"GGUF file '{self.path}' is version {version}; versions 2 and 3 are read")
        return self.read("Q")


def gguf_architecture(path: str | Path) -> str:
    """`general.architecture` of a GGUF file (e.g. 'llama', 'qwen2', 'gemma3'), from its header only."""
    path = Path(path)
    with open(path, "rb") as f:
        h = _Header(f, path)
        h.start()
        for _ in range(h.read("Q")):
            key, vtype = h.string(), h.read("I")
            if key == ARCH_KEY and vtype == GGUFValueType.STRING:
                return h.string()
            h.skip(vtype)
    raise ModelLoadError(f"GGUF file '{path}' has no '{ARCH_KEY}' in its header")


def gguf_model_type(path: str | Path) -> str:
    """The transformers model_type a GGUF file loads as."""
    arch = gguf_architecture(path)
    return MODEL_TYPE_OF_GGUF_ARCH.get(arch, arch)


def gguf_parameter_count(path: str | Path) -> int:
    """Elements in all of a GGUF file's tensors, from its tensor infos (a tied LM head counts
    once when the file stores it once)."""
    path = Path(path)
    with open(path, "rb") as f:
        h = _Header(f, path)
        tensors = h.start()
        for _ in range(h.read("Q")):
            h.string()
            h.skip(h.read("I"))
        total = 0
        for _ in range(tensors):
            h.string()  # name
            n = 1
            for _ in range(h.read("I")):
                n *= h.read("Q")
            h.read("I"), h.read("Q")  # ggml type, data offset
            total += n
    return total
