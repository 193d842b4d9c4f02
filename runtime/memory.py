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
once at load to build its prepacked weights.

`collapse_huge_pages` backs the large anonymous mappings a loaded session holds (its prepacked
weights) with 2 MiB transparent huge pages. A decode step streams every weight once; with 4 KiB
pages it also needs a new address translation every 4 KiB of them, with 2 MiB pages every 2 MiB: SmolLM2-135M's
fp32 and int4 decode steps took 0.93-0.94x the time with them collapsed, at the same RSS,
for a slower load (bench/results/huge_pages.md)."""

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
_SMAPS_FIELDS = {"Rss:": "rss", "Anonymous:": "anonymous", "AnonHugePages:": "huge"}  # KiB each


def _mappings() -> list[dict]:
    """This process's mappings from /proc/self/smaps: start, end, path ('' when anonymous),
    and the KiB of its Rss, Anonymous and AnonHugePages lines (rss, anonymous, huge)."""
    out: list[dict] = []
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if not head:
                continue
            if _MAPPING.match(head[0]):  # a mapping's header: address range, perms, offset, dev, inode[, path]
                start, end = (int(x, 16) for x in head[0].split("-"))
                out.append({"start": start, "end": end, "path": head[5] if len(head) >= 6 else "", "rss": 0, "anonymous": 0,
                            "huge": 0})
            elif out and head[0] in _SMAPS_FIELDS:
                out[-1][_SMAPS_FIELDS[head[0]]] = int(head[1])
    return out


def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


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
    try:
        spans = [(m["start"], m["end"], m["rss"], m["anonymous"]) for m in _mappings() if m["path"] == target]
        libc = _libc()
    except OSError:
        return 0
    released = 0
    for start, end, rss, written in spans:
        if rss and not written and libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_DONTNEED) == 0:
            released += rss << 10
    return released


MADV_COLLAPSE = 25  # Linux 6.1+: collapse a range's pages into transparent huge pages, synchronously
HUGE_PAGE = 2 << 20


def collapse_huge_pages(min_bytes: int = 8 << 20, min_resident: float = 0.9) -> int:
    """Back each anonymous mapping of this process (the heap included) of at least `min_bytes`
    whose pages are at least `min_resident` resident with transparent huge pages
    (madvise MADV_COLLAPSE); returns the bytes collapsed. Mostly unresident mappings are left
    alone, because collapsing fills a huge page's missing pages: a KV buffer that becomes
    resident only as tokens are written (kv_cache.host_kv_buffer) or an arena's untouched
    reserve would grow RSS. The same bytes stay resident, now in fewer, larger pages.
    Call it once a session is built and before its KV cache exists. Linux 6.1+ only; where
    madvise refuses (an older kernel, no huge page free), that range keeps its pages and 0
    bytes count for it. A range already in huge pages (an earlier call: every session built in
    the process calls it) is not asked again."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        maps = _mappings()
        libc = _libc()
    except OSError:
        return 0
    done = 0
    for m in maps:
        if m["path"] not in ("", "[heap]") or m["end"] - m["start"] < min_bytes:
            continue
        if (m["rss"] << 10) < min_resident * (m["end"] - m["start"]):
            continue
        start = -(-m["start"] // HUGE_PAGE) * HUGE_PAGE  # the whole huge pages inside the mapping
        end = m["end"] // HUGE_PAGE * HUGE_PAGE
        if end <= start or (m["huge"] << 10) >= end - start:
            continue
        if libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_COLLAPSE) == 0:
            done += end - start
    return done
