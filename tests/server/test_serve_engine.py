"""The batching engine in process: incremental detokenisation and stop strings, the bounded
queue (a cancelled waiting job frees its place), rows ending on their own, and a failure
confined to its row or its batch while the worker goes on."""

import threading

import pytest

from edgedelta.runtime import GenerationConfig, Session
from edgedelta.runtime.serve_engine import Done, Draining, Engine, Failed, Job, Piece, QueueFull, RowText


@pytest.fixture(scope="module")
def session(serve_artifact):
    return Session.from_dir(serve_artifact, provider="cpu", threads=1)


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
    assert {j.batch_size for j, _ in jobs} == {3}  # one batch
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
    assert bad_job.batch_size == 3


def test_a_failing_forward_ends_its_batch_and_the_next_batch_runs(session):
    class Flaky:
        """The session, except that its second forward call raises (a decode step of the first batch)."""

        def __init__(self, s):
            self.s, self.calls = s, 0
            self.tokenizer, self.artifact = s.tokenizer, s.artifact

        def new_cache(self, b, cap):
            return self.s.new_cache(b, cap)

        def forward(self, *a):
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("ORT failed")
            return self.s.forward(*a)

    eng = Engine(Flaky(session), max_batch=2, window_s=0.5)
    first = [_job(session, "Hello", max_new_tokens=5) for _ in range(2)]
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
