"""Process memory settings for edge use.

glibc's malloc raises its mmap threshold each time a large mmapped block is freed (up to
32 MiB), after which large tensors come from per-thread heaps that it rarely returns to the
OS. With ONNX Runtime's worker threads allocating prefill activations, peak RSS doubled:
SmolLM2-135M at a 512-token prefill measured 1,844 MiB with the default, 842-877 MiB with a
fixed 128 KiB-1 MiB threshold; at 1024 tokens a 1 MiB threshold still left 1,278 MiB (blocks
of 128 KiB-1 MiB fragment the per-thread heaps) and 128 KiB gave 1,059 MiB. `tune_malloc`
fixes the threshold at 128 KiB (glibc's own starting value, which it otherwise raises):
blocks above it are mmapped and returned on free. Decode allocates almost nothing that large
(the KV cache and logits are preallocated by Session), so decode speed is unaffected."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3  # mallopt parameter numbers from glibc's malloc.h
_done: int | None = None


def tune_malloc(mmap_threshold: int = 128 << 10) -> bool:
    """Fix glibc's mmap threshold (process-wide, idempotent). False where not glibc/Linux."""
    global _done
    if _done == mmap_threshold:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = bool(libc.mallopt(M_MMAP_THRESHOLD, int(mmap_threshold)))
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return False
    if ok:
        _done = mmap_threshold
    return ok
