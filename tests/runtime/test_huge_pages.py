"""Transparent huge pages for a session's large resident memory (edgedelta/runtime/memory.py
collapse_huge_pages): a resident anonymous block is collapsed with its bytes kept and not asked
again, a mostly unresident one is left alone (collapsing would fill it), and Session.from_dir collapses on CPU
unless asked not to, after the session is built and before any KV cache exists."""

import ctypes
import mmap
import sys

import numpy as np
import pytest

from edgedelta.runtime import Session, memory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise and /proc/self/smaps are Linux's")
MIB = 1 << 20


def _mapping(addr: int) -> dict:
    """The smaps entry (rss, huge: Rss and AnonHugePages in KiB) of the mapping that holds `addr`."""
    return next(m for m in memory._mappings() if m["start"] <= addr < m["end"])


def _anonymous(size: int) -> tuple[mmap.mmap, int]:
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return m, ctypes.addressof(ctypes.c_char.from_buffer(m))


def test_resident_block_is_collapsed_once_with_its_bytes_and_a_sparse_one_is_not(monkeypatch):
    full, full_addr = _anonymous(32 * MIB)
    data = np.random.default_rng(0).integers(0, 256, 32 * MIB, dtype=np.uint8)
    full[:] = data.tobytes()  # every page resident
    sparse, sparse_addr = _anonymous(64 * MIB)
    sparse[0] = 1  # one page resident
    done = memory.collapse_huge_pages(min_bytes=16 * MIB)
    if done == 0 or _mapping(full_addr)["huge"] == 0:
        pytest.skip("this kernel does not collapse into huge pages (MADV_COLLAPSE: Linux 6.1+, THP built in)")
    assert done >= 28 * MIB and _mapping(full_addr)["huge"] >= 28 * 1024
    assert bytes(full[:]) == data.tobytes()
    assert _mapping(sparse_addr)["rss"] < 1024 and _mapping(sparse_addr)["huge"] == 0
    asked = []  # a second call (a second session in the process) leaves the collapsed block alone
    libc = memory._libc()
    monkeypatch.setattr(memory, "_libc", lambda: type("Libc", (), {"madvise": lambda self, a, n, adv: asked.append(
        (a.value, n.value)) or libc.madvise(a, n, adv)})())
    memory.collapse_huge_pages(min_bytes=16 * MIB)
    assert not [a for a, n in asked if a < full_addr + 32 * MIB and full_addr < a + n]
    full.close()
    sparse.close()


def test_session_collapses_after_build_unless_told_not_to(tiny_edgedelta, monkeypatch):
    _, art = tiny_edgedelta
    calls = []
    monkeypatch.setattr(memory, "collapse_huge_pages", lambda *a, **k: calls.append(1) or 0)
    ref = Session.from_dir(art, provider="cpu", threads=1, huge_pages=False)
    assert calls == []
    s = Session.from_dir(art, provider="cpu", threads=1)
    assert calls == [1]
    prompt = "The pump on line 3"
    assert s.generate(prompt, max_new_tokens=8).token_ids == ref.generate(prompt, max_new_tokens=8).token_ids
