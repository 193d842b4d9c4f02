"""KV cache storage the runtime owns: the KVCache record, host buffers that become resident
page by page, and rows of a device buffer addressed inside it."""

from __future__ import annotations

import ctypes
import functools
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
    released_at: int = 0  # the length at which slots behind sliding windows were last released (release_behind_windows)

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
    # private: MADV_DONTNEED on a shared anonymous mapping would keep its pages in shmem
    if hasattr(mmap, "MAP_PRIVATE"):
        mm = mmap.mmap(-1, n * dtype.itemsize, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    else:  # Windows: no madvise either, so nothing is released
        mm = mmap.mmap(-1, n * dtype.itemsize)
    if hasattr(mm, "madvise") and hasattr(mmap, "MADV_NOHUGEPAGE"):
        mm.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(mm, dtype=dtype, count=n)  # the array keeps the mapping alive; unmapped with it


# A sliding-window cache runs this many slots past its window before the slots behind the
# window are given back: one madvise per (row, kv head, K/V, sliding layer) every 256 tokens.
WINDOW_RELEASE_STEP = 256
PAGE = mmap.PAGESIZE
_MADV_DONTNEED = 4  # Linux


@functools.cache
def _madvise():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc.madvise


def window_slots(window: int, head_dim: int, itemsize: int) -> int:
    """The most slots of a (row, kv head) that stay resident for a layer with this sliding
    window: the window, the slot before it, the release step, and two partial pages."""
    return window + 1 + WINDOW_RELEASE_STEP + -(-2 * PAGE // (head_dim * itemsize))


def row_lengths(attention_mask: np.ndarray) -> np.ndarray:
    """(B, T) mask -> (B,) slots each row has written: its last attended slot + 1 (0 for none)."""
    m = np.asarray(attention_mask) != 0
    last = m.shape[1] - np.argmax(m[:, ::-1], axis=1)
    return np.where(m.any(axis=1), last, 0)


def release_behind_windows(cache: KVCache, windows: dict[str, int], lengths: np.ndarray, kv_heads: int,
                           head_dim: int) -> int:
    """Give back the pages of in-place KV buffers that no future step reads: for a past name
    with sliding window W, the slots of each row before (its length - W - 1). A query at slot
    p >= length attends to slots > p - W, so those slots are dead. The buffers are
    (B, kv_heads, capacity, head_dim) host arrays in private anonymous memory
    (host_kv_buffer): released pages read as zeros and come back only if written again (a
    row reused by the next request). Returns the bytes released (page-rounded)."""
    released = 0
    for name, window in windows.items():
        buf = cache.bufs[name][0]
        if not isinstance(buf, np.ndarray):
            continue  # device memory
        slot = head_dim * buf.itemsize
        chunk = cache.capacity * slot  # one (row, head): its slots are contiguous
        base = buf.ctypes.data
        for row, length in enumerate(lengths[: cache.batch]):
            dead = (int(length) - window - 1) * slot
            if dead < PAGE:
                continue
            for h in range(kv_heads):
                start = base + (row * kv_heads + h) * chunk
                lo, hi = -(-start // PAGE) * PAGE, (start + dead) // PAGE * PAGE  # whole pages inside the dead slots
                if hi > lo:
                    if _madvise()(lo, hi - lo, _MADV_DONTNEED) != 0:
                        raise OSError(ctypes.get_errno(), "madvise(MADV_DONTNEED) on a KV buffer failed")
                    released += hi - lo
    cache.released_at = cache.length
    return released
