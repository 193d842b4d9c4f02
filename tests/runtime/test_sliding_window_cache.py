"""A sliding-window layer's KV cache stays resident at about its window: the runtime gives
back the pages behind the window of an in-place cache (runtime/kv_cache.py
release_behind_windows), the tokens do not change, and the planner counts the smaller cache."""

import json
import mmap

import numpy as np
import pytest
import torch

from edgedelta.export import ExportConfig, export_onnx
from edgedelta.models.adapters import adapter_for
from edgedelta.runtime import Session
from edgedelta.runtime import kv_cache
from edgedelta.runtime import session as session_mod
from edgedelta.runtime.kv_cache import KVCache, host_kv_buffer, release_behind_windows, row_lengths
from tests.tiny import TINY_WINDOW, tiny_model, tiny_tokenizer

STEP = 16  # release every 16 slots instead of 256, so a 200-token run releases many times


def resident_bytes(buf: np.ndarray) -> int:
    """Bytes of a page-aligned host buffer held in pages of its own: present and exclusively
    mapped in /proc/self/pagemap (bits 63 and 56). A released page that a kernel reads again
    maps the shared zero page, which mincore would count and RSS does not."""
    assert buf.ctypes.data % mmap.PAGESIZE == 0
    n = -(-buf.nbytes // mmap.PAGESIZE)
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(buf.ctypes.data // mmap.PAGESIZE * 8)
        entries = np.frombuffer(f.read(8 * n), dtype=np.uint64)
    own = (entries >> np.uint64(63)) & (entries >> np.uint64(56)) & np.uint64(1)
    return int(own.sum()) * mmap.PAGESIZE


@pytest.fixture(scope="module")
def gemma2_art(tmp_path_factory):
    """Tiny Gemma 2 (sliding, global, sliding, global; W = TINY_WINDOW) exported with
    GroupQueryAttention (head_dim 16), the in-place cache."""
    model = tiny_model("gemma2", hidden=64)
    d = tmp_path_factory.mktemp("g2")
    model.save_pretrained(d / "src")
    tiny_tokenizer().save_pretrained(d / "src")
    art = export_onnx(d / "src", ExportConfig(), d / "art")
    return model, art


def _greedy(sess: Session, prompt: list[int], n: int, capacity: int) -> tuple[list[int], KVCache]:
    cache = sess.new_cache(1, capacity)
    ids = np.array([prompt])
    logits = sess.forward(ids, np.ones_like(ids), np.arange(len(prompt))[None], cache)
    out = []
    for _ in range(n):
        out.append(int(logits[0].argmax()))
        t = cache.length
        logits = sess.forward(np.array([[out[-1]]]), np.ones((1, t + 1), np.int64), np.array([[t]]), cache)
    return out, cache


def test_manifest_names_each_layers_window(gemma2_art):
    model, art = gemma2_art
    m = json.loads((art / "manifest.json").read_text())
    assert m["io"]["kv_update"] == "in_place"
    assert m["architecture"]["sliding_windows"] == [TINY_WINDOW, None, TINY_WINDOW, None]
    assert list(adapter_for(model.config).layer_windows(model.config.to_dict())) == m["architecture"]["sliding_windows"]


def test_sliding_layers_stay_resident_at_their_window_and_tokens_do_not_change(gemma2_art, monkeypatch):
    model, art = gemma2_art
    monkeypatch.setattr(session_mod, "WINDOW_RELEASE_STEP", STEP)
    monkeypatch.setattr(kv_cache, "WINDOW_RELEASE_STEP", STEP)
    prompt, n = [5, 17, 33, 9, 60, 71, 12, 40, 3, 88, 21], 200
    with torch.no_grad():
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    sess = Session.from_dir(art, provider="cpu", threads=1, tokenizer=None)
    assert sess.kv.windows == (TINY_WINDOW, None, TINY_WINDOW, None)
    got, cache = _greedy(sess, prompt, n, capacity=256)
    assert got == ref[0, len(prompt):].tolist()  # released slots are never read
    slot = sess.kv.head_dim * 4
    length = len(prompt) + n
    bound = sess.kv.kv_heads * (kv_cache.window_slots(TINY_WINDOW, sess.kv.head_dim, 4) * slot)
    for i, w in enumerate(sess.kv.windows):
        for part in ("key", "value"):
            res = resident_bytes(cache.bufs[f"past_key_values.{i}.{part}"][0])
            if w is None:  # a global layer keeps every slot written
                assert res >= sess.kv.kv_heads * length * slot
            else:
                assert res <= bound < sess.kv.kv_heads * length * slot


def test_release_keeps_each_rows_window_and_the_rows_around_it():
    """Ragged rows: each row releases behind its own length; another row's slots and the
    window are untouched (read back unchanged), the dead slots read as zeros."""
    kvh, hd, cap, w = 2, 16, 512, 8
    slot = hd * 4
    buf = host_kv_buffer(2 * kvh * cap * hd, np.dtype(np.float32))
    buf[:] = 1.0
    cache = KVCache(2, cap, {"k": (buf, buf)}, length=400)
    mask = np.zeros((2, 400), np.int64)
    mask[0, :400] = 1
    mask[1, :100] = 1
    lengths = row_lengths(mask)
    assert lengths.tolist() == [400, 100]
    released = release_behind_windows(cache, {"k": w}, lengths, kvh, hd)
    v = buf.reshape(2, kvh, cap, hd)  # each (row, head) starts on a page: cap * slot = 8 pages
    dead = [(n - w - 1) * slot // mmap.PAGESIZE * mmap.PAGESIZE // slot for n in (400, 100)]  # whole pages of dead slots
    assert dead[0] > dead[1] > 0 and released == kvh * (dead[0] + dead[1]) * slot
    for row in (0, 1):
        assert (v[row, :, :dead[row]] == 0).all() and (v[row, :, dead[row]:] == 1).all()
        assert dead[row] <= lengths[row] - w - 1  # the window and the slot before it are kept
    assert cache.released_at == 400


def test_planner_counts_a_sliding_layers_cache_at_its_window():
    from devices.planner import ModelFacts

    common = dict(name="m", weight_bytes=1, weight_bytes_read_per_token=1, num_layers=4, kv_heads=2, head_dim=64,
                  kv_itemsize=4, vocab_size=10, hidden_size=128, intermediate_size=256, num_heads=2, max_positions=8192)
    full = ModelFacts(**common, kv_buffers=1)
    windowed = ModelFacts(**common, kv_buffers=1, sliding_windows=(512, None, 512, None))
    concat = ModelFacts(**common, kv_buffers=2, sliding_windows=(512, None, 512, None))
    per_slot = 2 * 2 * 64 * 4  # K and V of one layer, one position
    assert full.kv_bytes(8192) == 4 * 8192 * per_slot
    assert windowed.kv_bytes(8192) == (2 * 8192 + 2 * kv_cache.window_slots(512, 64, 4)) * per_slot
    assert windowed.kv_bytes(300) == full.kv_bytes(300)  # shorter than the window: every slot
    assert concat.kv_bytes(8192) == full.kv_bytes(8192)  # past + present copies hold every slot
