"""The batching engine in process: incremental detokenisation and stop strings, the bounded
queue (a cancelled waiting job frees its place), rows ending on their own, and a failure
confined to its row or its batch while the worker goes on; both continuous batching (the
in-place KV graph) and static batching (the plain graph)."""

import threading

import pytest

from edgedelta.runtime import GenerationConfig, Session
from edgedelta.runtime.row_text import RowText
from edgedelta.runtime.serve_engine import Done, Draining, Engine, Failed, Job, Piece, QueueFull


@pytest.fixture(scope="module", params=["continuous", "static"])
def session(request, serve_artifact, plain_serve_artifact):
    art = serve_artifact if request.param == "continuous" else plain_serve_artifact
    s = Session.from_dir(art, provider="cpu", threads=1)
    assert s.in_place == (request.param == "continuous")  # the engine batches continuously exactly on in-place graphs
    return s


class Collect:
    """A job's events, and an Event set when it ends."""

    def __init__(self):
        self.events, self.ended = [], threading.Event()

    def __call__(self, ev):
        self.events.append(ev)
        if isinstance(ev, (Done, Failed)):
            self.ended.set()

    @property
    def text(self):
        return "".join(e.text for e in self.events if isinstance(e, Piece))

    @property
    def last(self):
        return self.events[-1]


def _job(session, prompt, **cfg):
    c = Collect()
    return Job(session.tokenizer(prompt)["input_ids"], GenerationConfig(**cfg), emit=c), c


def test_row_text_is_the_full_decode_piece_by_piece(session):
    tok = session.tokenizer
    text = "Unicode: café, naïve, 温度, émigré — 🙂 and the pump."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    row = RowText(tok, ())
    pieces = [row.push(t) for t in ids] + [row.flush()]
    assert "".join(pieces) == tok.decode(ids, skip_special_tokens=True)
    assert all("\ufffd" not in p for p in pieces)  # a multi-byte character is released whole


def test_row_text_holds_back_a_possible_stop_string_and_cuts_at_it(session):
    tok = session.tokenizer
    ids = tok("Check the pressure valve before restarting", add_special_tokens=False)["input_ids"]
    row = RowText(tok, ("valve", "pressure gauge"))
    out = ""
    for t in ids:
        out += row.push(t)
        assert not out.endswith("pres")  # "pres..." could still become "pressure gauge": held back
        if row.stopped:
            break
    out += row.flush()
    assert row.stopped and out == "Check the pressure "


def test_queue_is_bounded_and_a_cancelled_waiting_job_frees_its_place(session):
    eng = Engine(session, max_batch=2, max_queue=2)  # worker not started: jobs stay queued
    a, ca = _job(session, "Hello", max_new_tokens=4)
    b, _ = _job(session, "Hello", max_new_tokens=4)
    eng.submit(a)
    eng.submit(b)
    with pytest.raises(QueueFull):
        eng.submit(_job(session, "Hello", max_new_tokens=4)[0])
    eng.cancel(a)
    assert ca.last == Done("cancelled", 0) and eng.queue_depth == 1
    eng.submit(_job(session, "Hello", max_new_tokens=4)[0])
    eng.drain()
    with pytest.raises(Draining):
        eng.submit(_job(session, "Hello", max_new_tokens=4)[0])
    eng.stop()


def test_rows_end_on_their_own_and_greedy_rows_match_generate(session):
    eng = Engine(session, max_batch=4, max_queue=8, window_s=0.5)
    jobs = [_job(session, p, max_new_tokens=n, eos=False) for p, n in (("Hello world", 3), ("The pump", 30), ("Check", 12))]
    for j, _ in jobs:
        eng.submit(j)
    eng.start()
    for j, c in jobs:
        assert c.ended.wait(30)
    eng.stop()
    # static: one batch. continuous: one prefill per decode step; "Hello world" (3 tokens) ends
    # at the second step, before the third request is taken
    assert [j.batch_size for j, _ in jobs] == ([1, 2, 2] if session.in_place else [3, 3, 3])
    for (j, c), (p, n) in zip(jobs, (("Hello world", 3), ("The pump", 30), ("Check", 12))):
        assert c.last == Done("length", n)
        assert c.text == session.generate(p, max_new_tokens=n, eos=False).text
    short, long_ = jobs[0][0], jobs[1][0]
    assert short.t_end < long_.t_end  # the short answer was delivered before the batch ended


def test_a_failing_row_ends_alone(session):
    class Broken:
        def __call__(self, logits):
            raise FloatingPointError("bad logits")

    eng = Engine(session, max_batch=3, window_s=0.5)
    good = [_job(session, "Hello", max_new_tokens=10, eos=False) for _ in range(2)]
    bad_job, bad = _job(session, "Hello", max_new_tokens=10)
    bad_job.sampler = Broken()
    for j, _ in (good[0], (bad_job, bad), good[1]):
        eng.submit(j)
    eng.start()
    for _, c in (*good, (bad_job, bad)):
        assert c.ended.wait(30)
    eng.stop()
    assert isinstance(bad.last, Failed) and "FloatingPointError: bad logits" in bad.last.message
    assert all(c.last == Done("length", 10) for _, c in good)
    # continuous: the bad row ends at its first token, before the third request is taken
    assert bad_job.batch_size == (2 if session.in_place else 3)


class Flaky:
    """The session, except that its forward call number `fail_at` raises."""

    def __init__(self, s, fail_at):
        self.s, self.calls, self.fail_at = s, 0, fail_at

    def __getattr__(self, name):
        return getattr(self.s, name)

    def forward(self, *a):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("ORT failed")
        return self.s.forward(*a)


def test_a_failing_decode_step_ends_its_rows_and_the_next_request_runs(session):
    # calls: static = one batched prefill, then decode steps of both rows; continuous = prefill,
    # step, prefill, step: call 4 is the first decode step of both rows
    eng = Engine(Flaky(session, fail_at=4 if session.in_place else 3), max_batch=2, window_s=0.5)
    first = [_job(session, "Hello", max_new_tokens=5, eos=False) for _ in range(2)]
    for j, _ in first:
        eng.submit(j)
    eng.start()
    for _, c in first:
        assert c.ended.wait(30)
    later, c = _job(session, "Hello", max_new_tokens=5, eos=False)
    eng.submit(later)
    assert c.ended.wait(30)
    eng.stop()
    assert all(isinstance(c.last, Failed) and "ORT failed" in c.last.message for _, c in first)
    assert c.last == Done("length", 5) and len(c.text) > 0


def test_a_failing_prefill_ends_only_its_request_when_batching_continuously(session):
    if not session.in_place:
        pytest.skip("static batching prefills a batch in one call: its failure is the batch's")
    eng = Engine(Flaky(session, fail_at=3), max_batch=2, window_s=0.5)  # prefill, step, prefill
    (a, ca), (b, cb) = [_job(session, "Hello", max_new_tokens=5, eos=False) for _ in range(2)]
    eng.submit(a)
    eng.submit(b)
    eng.start()
    assert ca.ended.wait(30) and cb.ended.wait(30)
    eng.stop()
    assert ca.last == Done("length", 5) and ca.text == session.generate("Hello", max_new_tokens=5, eos=False).text
    assert isinstance(cb.last, Failed) and "ORT failed" in cb.last.message


def test_a_request_joins_running_rows_without_waiting_for_them(session):
    """Continuous batching: a request submitted while a long one decodes gets its first token
    and its whole answer before the long one ends, and both answers equal generate()'s."""
    if not session.in_place:
        pytest.skip("static batching: a request arriving mid-batch waits for the batch")
    eng = Engine(session, max_batch=4)
    long_, cl = _job(session, "The pump on line three", max_new_tokens=400, eos=False)
    eng.submit(long_)
    eng.start()
    while long_.produced < 20:  # the long row is decoding
        assert not cl.ended.wait(0.005)
    short, cs = _job(session, "Check the pressure", max_new_tokens=12, eos=False)
    eng.submit(short)
    assert cs.ended.wait(30) and cl.ended.wait(60)
    eng.stop()
    assert short.t_end < long_.t_end and short.batch_size == 2
    assert cs.text == session.generate("Check the pressure", max_new_tokens=12, eos=False).text
    assert cl.text == session.generate("The pump on line three", max_new_tokens=400, eos=False).text


def test_a_request_longer_than_the_cache_waits_for_the_running_rows(session):
    if not session.in_place:
        pytest.skip("static batching sizes each batch's cache for its own rows")
    eng = Engine(session, max_batch=2, min_capacity=64)
    first, c1 = _job(session, "Hello", max_new_tokens=40, eos=False)  # the cache: 64 slots a row
    big, c2 = _job(session, "Hello", max_new_tokens=100, eos=False)  # needs more than 64
    eng.submit(first)
    eng.submit(big)  # a row is free, but the cache is too short for it while `first` runs
    eng.start()
    assert c1.ended.wait(30) and c2.ended.wait(30)
    eng.stop()
    assert big.t_start >= first.t_end and big.batch_size == 1
    assert c2.text == session.generate("Hello", max_new_tokens=100, eos=False).text


def test_sampling_rows_keep_their_own_seed(session):
    """A seeded row gives the same text alone and batched with others (its own generator)."""
    def run(n_others):
        eng = Engine(session, max_batch=4, window_s=0.5)
        mine, c = _job(session, "Hello", max_new_tokens=16, do_sample=True, seed=3, eos=False)
        others = [_job(session, "The pump", max_new_tokens=8, do_sample=True, seed=s)[0] for s in range(n_others)]
        for j in [*others, mine]:
            eng.submit(j)
        eng.start()
        assert c.ended.wait(30)
        eng.stop()
        return c.text

    alone, batched = run(0), run(3)
    assert alone == batched and len(alone) > 0


def _resident(lo: int, hi: int) -> tuple[int, int, int]:
    """(bytes mapped, Rss, AnonHugePages) of the mappings that overlap [lo, hi): a buffer can
    span several (madvise splits a mapping; adjacent buffers can share one)."""
    out, cur = [0, 0, 0], None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and all(c in "0123456789abcdef-" for c in head):
                a, b = (int(x, 16) for x in head.split("-"))
                cur = a < hi and lo < b
                if cur:
                    out[0] += b - a
            elif cur and line.startswith("Rss:"):
                out[1] += int(line.split()[1]) * 1024
            elif cur and line.startswith("AnonHugePages:"):
                out[2] += int(line.split()[1]) * 1024
    return out[0], out[1], out[2]


def test_a_cache_reserved_at_capacity_is_resident_only_where_written(serve_artifact):
    """The server reserves every row at its capacity; requests that wrote a few slots must
    not make whole rows resident (numpy's huge pages would: 2 MiB per touched region)."""
    import sys

    import numpy as np

    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc/self/smaps")
    s = Session.from_dir(serve_artifact, provider="cpu", threads=1)
    cache = s.new_cache(16, 2048)  # 4 MiB per K/V tensor here: numpy would ask for huge pages
    buf = cache.bufs["past_key_values.0.key"][0]
    assert buf.nbytes >= 4 << 20 and not buf[:64].any()
    for row in range(16):  # one token in every row: a page every 256 KiB of each buffer
        s.forward(np.array([[5]]), np.ones((1, 1), np.int64), np.zeros((1, 1), np.int64), s.cache_rows(cache, row, row + 1))
    size, rss, huge = _resident(buf.ctypes.data, buf.ctypes.data + buf.nbytes)
    buffers = max(1, round(size / buf.nbytes))  # adjacent K/V buffers may share one mapping
    pages = buffers * 16 * s.kv.kv_heads  # one 4 KiB page per row and head of each buffer
    assert huge == 0 and rss <= 2 * pages * 4096, (rss, huge, buffers)
