"""Releasing the pages of mapped weight files (edgedelta/runtime/memory.py): clean pages leave
the process and come back on the next read with the same bytes; a mapping with private writes
is left alone; a session that released its weight file's pages generates the same tokens."""

import mmap
import os
import re
import sys

import numpy as np
import pytest

from edgedelta.runtime import Session
from edgedelta.runtime.memory import release_clean_pages

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise and /proc/self/smaps are Linux's")


def _rss_kib(path) -> int:
    """Resident KiB of this process's mappings of `path`."""
    target, total, cur = os.path.realpath(path), 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if re.match(r"^[0-9a-f]+-[0-9a-f]+$", head[0]):  # a mapping's header (no path: anonymous)
                cur = len(head) >= 6 and head[5] == target
            elif cur and head[0] == "Rss:":
                total += int(head[1])
    return total


def test_clean_pages_are_released_and_read_back_and_written_ones_are_kept(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 64 * 4096, dtype=np.uint8).tobytes()
    clean, written = tmp_path / "clean.bin", tmp_path / "written.bin"
    clean.write_bytes(data)
    written.write_bytes(data)
    with open(clean, "rb") as f1, open(written, "r+b") as f2:
        m1 = mmap.mmap(f1.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        m2 = mmap.mmap(f2.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        assert bytes(m1) == data and bytes(m2) == data  # every page touched
        m2[0] = (data[0] + 1) % 256  # a private write: the mapping now differs from the file
        assert _rss_kib(clean) >= 64 * 4 and _rss_kib(written) >= 64 * 4
        assert release_clean_pages(clean) >= 64 * 4096 and release_clean_pages(written) == 0
        assert _rss_kib(clean) == 0 and _rss_kib(written) >= 64 * 4
        assert bytes(m1) == data and m2[0] == (data[0] + 1) % 256  # read back from the page cache; the write kept
        m1.close()
        m2.close()


def test_a_session_that_released_its_weight_pages_generates_the_same(tiny_edgedelta):
    _, art = tiny_edgedelta
    data, prompt = art / "model.onnx.data", "The pump on line 3"
    kept = Session.from_dir(art, provider="cpu", threads=1, release_pages=False)
    before = kept.generate(prompt, max_new_tokens=12).token_ids
    assert _rss_kib(data) > 0  # ORT maps the weight file and its pages are resident
    freed = Session.from_dir(art, provider="cpu", threads=1)  # releases every clean mapping of the file in this process
    assert _rss_kib(data) == 0
    assert freed.generate(prompt, max_new_tokens=12).token_ids == before
    assert kept.generate(prompt, max_new_tokens=12).token_ids == before
