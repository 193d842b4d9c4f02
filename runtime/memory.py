"""Process memory settings for edge use.

glibc's malloc raises its mmap threshold each time a large mmapped block is freed (up to
32 MiB), after which large tensors come from per-thread heaps that it rarely returns to the
OS. With ONNX Runtime's worker threads allocating prefill activations, peak RSS doubled:
SmolLM2-135M at a 512-token prefill measured 1,844 MiB with the default, 842-877 MiB with a
fixed 128 KiB-1 MiB threshold; at 1024 tokens a 1 MiB threshold still left 1,278 MiB (blocks
of 128 KiB-1 MiB fragment the per-thread heaps) and 128 KiB gave 1,059 MiB. `tune_malloc`
fixes the threshold at 128 KiB (glibc's own starting value, which it otherwise raises):
blocks above it are mmapped and returned on free. Decode allocates almost nothing that large
(the KV cache and logits are preallocated by Session), so decode speed is unaffected.

`release_clean_pages` gives back the pages of the mapped weight file that ONNX Runtime read
once at load to build its prepacked weights."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
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


MADV_DONTNEED = 4  # Linux madvise advice number
_MAPPING = re.compile(r"^[0-9a-f]+-[0-9a-f]+$")


def release_clean_pages(path: str | os.PathLike) -> int:
    """Drop this process's resident pages of every mapping of the file `path` that holds no
    private writes (smaps Anonymous 0: a write to a private file mapping makes an anonymous
    copy of the page, which dropping would lose); returns the bytes that were resident there.
    The pages stay in the page cache: a later read maps them back without a disk read.

    Why: ONNX Runtime maps an artifact's external weights (one mapping per initializer) and
    reads every quantized weight once at load to build its prepacked copy, which is what the
    kernels read from then on; the originals' pages stay resident beside that copy. Released,
    SmolLM2-135M int4's RSS after load is 0.85x, with the same tokens and decode speed
    (bench/results/release_pages.md). Linux only; elsewhere (or where madvise fails) nothing is
    released and 0 is returned."""
    if not sys.platform.startswith("linux"):
        return 0
    target = os.path.realpath(path)
    spans: list[list[int]] = []  # [start, end, rss KiB, anonymous KiB (pages this process wrote: copies)]
    cur = None
    try:
        with open("/proc/self/smaps") as f:
            for line in f:
                head = line.split()
                if not head:
                    continue
                if _MAPPING.match(head[0]):  # a mapping's header: address range, perms, offset, dev, inode[, path]
                    cur = None
                    if len(head) >= 6 and head[5] == target:
                        start, end = (int(x, 16) for x in head[0].split("-"))
                        cur = [start, end, 0, 0]
                        spans.append(cur)
                elif cur is not None and head[0] in ("Rss:", "Anonymous:"):
                    cur[2 if head[0] == "Rss:" else 3] = int(head[1])
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return 0
    released = 0
    for start, end, rss, written in spans:
        if rss and not written and libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_DONTNEED) == 0:
            released += rss << 10
    return released
