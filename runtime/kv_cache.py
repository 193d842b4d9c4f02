"""KV cache storage the runtime owns: the KVCache record, host buffers that become resident
page by page, and rows of a device buffer addressed inside it."""

from __future__ import annotations

import itertools
import mmap
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_cache_serials = itertools.count()


@dataclass
class KVCache:
    """KV storage for `batch` rows and up to `capacity` positions.

    In place (an artifact whose graph updates its cache in place, manifest io.kv_update):
    bufs[name] = (A, A), one buffer of (batch, kv_heads, capacity, head_dim) bound to both
    past and present; memory KVSpec.bytes(capacity). Otherwise double-buffered: bufs[name] =
    (A, B), two flat buffers; `length` positions are valid in bufs[name][parity]; memory
    2 × KVSpec.bytes(capacity)."""

    batch: int
    capacity: int
    bufs: dict[str, tuple[Any, Any]]
    length: int = 0
    parity: int = 0
    serial: int = field(default_factory=lambda: next(_cache_serials))  # tells Session its bindings are still this cache's

    def nbytes(self) -> int:
        total = 0
        for a, b in self.bufs.values():
            for x in ((a,) if a is b else (a, b)):
                total += x.nbytes if hasattr(x, "nbytes") else x.tensor_size_in_bytes()
        return total


@dataclass(frozen=True)
class DeviceRows:
    """Rows of a device KV buffer (an address inside an OrtValue that keeps the memory)."""

    ptr: int
    nbytes: int

    def data_ptr(self) -> int:
        return self.ptr


def host_kv_buffer(n: int, dtype: np.dtype) -> np.ndarray:
    """n zeros of `dtype` in anonymous memory that becomes resident page by page as tokens are
    written, in 4 KiB pages. numpy asks for transparent huge pages on arrays of 4 MiB and more,
    and a 2 MiB page per row head would make a server's cache, reserved at its capacity but
    filled a few hundred tokens deep, resident almost whole (measured: 120 MiB per request for
    SmolLM2 at a 2,048-token capacity, against 3 MiB written)."""
    mm = mmap.mmap(-1, n * dtype.itemsize)
    if hasattr(mm, "madvise") and hasattr(mmap, "MADV_NOHUGEPAGE"):
        mm.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(mm, dtype=dtype, count=n)  # the array keeps the mapping alive; unmapped with it
