"""The batching engine of `edgedelta serve`: a bounded queue and one worker thread that decodes
the requests it takes together over one Session. Each row samples with its own settings
(temperature, top_p, seed, stop strings, max_tokens) and ends on its own.

Continuous batching, on an artifact whose KV cache is updated in place (manifest
io.kv_update, the GroupQueryAttention graph): the worker keeps one cache of `max_batch` rows.
A request takes a free row at the next decode step, is prefilled alone into it
(Session.cache_rows), one prefill per step, and joins the decode steps with its own length (a
ragged mask, Session.forward). A request whose prompt plus max_tokens exceeds the cache's
capacity waits until the running rows end; the cache is then allocated for it.
Static batching, on other graphs (a concatenated KV cache): up to `max_batch` jobs that arrive
within `window_s` are prefilled together left-padded and decoded until the last row ends.

Threads: the app calls `submit`/`cancel`/`drain` from its event loop; the worker calls each
job's `emit` from its own thread (the app turns that into a thread-safe hand-over). ONNX
Runtime releases the GIL while it runs, so the event loop keeps serving during a forward.
A failure is confined: an error while sampling or detokenising one row ends that row only; an
error in a prefill ends its request; an error in a decode step ends the rows of that step, and
the worker goes on with the next requests."""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .row_text import RowText
from .sampling import GenerationConfig, Sampler

# prefill tokens per forward call, summed over the batch: the logits of a prefill chunk are
# [B, chunk, V] fp32, 201 MB for SmolLM2's 49,152-token vocabulary at B*chunk = 1024
PREFILL_TOKEN_BUDGET = 1024


class QueueFull(Exception):
    """The bounded queue is full: the app answers 429 with Retry-After."""


class Draining(Exception):
    """The server is shutting down (SIGTERM) and takes no new work: the app answers 503."""


@dataclass(frozen=True)
class Piece:
    text: str


@dataclass(frozen=True)
class Done:
    finish_reason: str  # "eos" | "stop" | "length" | "cancelled"
    completion_tokens: int


@dataclass(frozen=True)
class Failed:
    message: str
    status: int = 500  # HTTP status of the answer: 500 a fault, 503 the server stopped


Event = Piece | Done | Failed
_ids = itertools.count()


@dataclass(eq=False)
class Job:
    """One request as the engine sees it: prompt token ids and the row's generation settings
    (GenerationConfig: max_new_tokens, do_sample, temperature, top_p, seed, stop, eos).
    `emit(event)` is called from the worker thread with Piece*, then exactly one Done or Failed."""

    ids: list[int]
    config: GenerationConfig
    emit: Callable[[Event], None]
    sampler: Sampler | None = None  # built from `config` unless given
    id: int = field(default_factory=lambda: next(_ids))
    cancelled: bool = False  # set by the app when the client goes away
    finished: bool = False
    produced: int = 0  # tokens sampled so far
    t_submit: float = 0.0  # time.perf_counter() stamps for the metrics
    t_start: float = 0.0  # the worker took it into a batch
    t_first: float = 0.0  # its first token was sampled
    t_end: float = 0.0
    batch_size: int = 0

    def __post_init__(self):
        if self.sampler is None:
            self.sampler = Sampler(self.config)

    def _finish(self, event: Event) -> None:
        if not self.finished:
            self.finished = True
            self.t_end = time.perf_counter()
            self._send(event)

    def _send(self, event: Event) -> None:
        try:
            self.emit(event)
        except Exception:  # the receiver is gone (event loop closed at shutdown): nothing to tell
            self.cancelled = True


class Engine:
    """Bounded queue + batching worker over one Session (see the module docstring).

    max_batch: rows decoded together; max_queue: jobs that may wait for a batch (beyond it
    `submit` raises QueueFull); window_s (static batching): how long the worker waits after a
    job arrives for more to join its batch; min_capacity (continuous batching): KV slots per
    row the cache is allocated with at least (capped by the context), so that later requests
    fit it without waiting for the running rows to end. The memory is reserved, not touched:
    on the CPU a row's pages become resident only as its tokens are written."""

    def __init__(self, session, max_batch: int = 8, max_queue: int = 64, window_s: float = 0.01,
                 on_batch: Callable[[int], None] | None = None, min_capacity: int = 2048):
        self.s = session
        self.max_batch, self.max_queue, self.window_s = max_batch, max_queue, window_s
        context = session.artifact.max_positions
        self.min_capacity = min(min_capacity, context) if context else min_capacity
        self.on_batch = on_batch  # called with each batch's size (metrics)
        tok = session.tokenizer
        self.eos = set(session.artifact.eos_token_ids)
        if tok is not None and tok.eos_token_id is not None:
            self.eos.add(int(tok.eos_token_id))
        pad = tok.pad_token_id if tok is not None and tok.pad_token_id is not None else session.artifact.config.get("pad_token_id")
        self.pad = int(pad or 0)
        self._waiting: deque[Job] = deque()
        self._running: list[Job] = []
        self._cond = threading.Condition()
        self._draining = False
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="edgedelta-serve-engine", daemon=True)

    # ---- called from the app's event loop -------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue `job`, or raise Draining / QueueFull at once (never blocks)."""
        with self._cond:
            if self._draining or self._stop:
                raise Draining()
            if len(self._waiting) >= self.max_queue:
                raise QueueFull()
            job.t_submit = job.t_submit or time.perf_counter()
            self._waiting.append(job)
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """The client went away: a waiting job leaves the queue; a running row ends at the next step."""
        with self._cond:
            job.cancelled = True
            try:
                self._waiting.remove(job)
            except ValueError:
                return
        job._finish(Done("cancelled", 0))

    def drain(self) -> None:
        """Take no new jobs; the queued and running ones still run."""
        with self._cond:
            self._draining = True

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the worker after its current step; jobs still waiting or running are told the server stopped."""
        with self._cond:
            self._stop = True
            left = list(self._waiting)
            self._waiting.clear()
            self._cond.notify_all()
        for job in left:
            job._finish(Failed("the server stopped before this request ran", 503))
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return sum(not j.finished for j in self._running)

    # ---- the worker thread ------------------------------------------------------------------------------
    def _loop(self) -> None:
        if getattr(self.s, "in_place", False):
            self._loop_continuous()
        else:
            self._loop_static()

    def _step_row(self, job: Job, row: RowText, logits_row: np.ndarray, first: bool) -> int | None:
        """Sample `job`'s next token from its logits [1, V] and hand out its text; the token id,
        or None when the row ended (eos, stop string, length, cancelled, or its own failure)."""
        if job.cancelled:
            job._finish(Done("cancelled", job.produced))
            return None
        try:
            t = int(job.sampler(logits_row)[0])
            job.produced += 1
            if first:
                job.t_first = time.perf_counter()
            if job.config.eos and t in self.eos:
                self._end(job, row, "eos")
                return None
            piece = row.push(t)
            if piece:
                job._send(Piece(piece))
            if row.stopped:
                self._end(job, row, "stop")
                return None
            if job.produced >= job.config.max_new_tokens:
                self._end(job, row, "length")
                return None
            return t
        except Exception as e:  # this row only (its sampler or detokenisation)
            self._fail([job], e)
            return None

    @staticmethod
    def _fail(jobs, e: Exception) -> None:
        msg = f"generation failed: {type(e).__name__}: {' '.join(str(e).split())}"
        for job in jobs:
            job._finish(Failed(msg))

    # continuous batching (in-place KV cache) ------------------------------------------------------------
    def _loop_continuous(self) -> None:
        s = self.s
        rows: list[tuple[Job, RowText] | None] = [None] * self.max_batch  # the cache row each job holds
        lengths = np.zeros(self.max_batch, dtype=np.int64)  # slots written in each row
        next_ids = np.full((self.max_batch, 1), self.pad, dtype=np.int64)
        cache = None
        while True:
            with self._cond:
                while not self._waiting and not any(rows) and not self._stop:
                    cache = None  # idle: the KV memory goes back
                    self._cond.wait()
                if self._stop:
                    break
                admitted = []
                # one prefill per decode step: a running row waits for at most one prompt between
                # two of its tokens, and requests that arrive together are spread over steps (taken
                # together, they would end together and arrive together again, in step for good)
                while self._waiting and None in rows and not admitted:
                    job = self._waiting[0]
                    need = len(job.ids) + job.config.max_new_tokens
                    if cache is not None and need > cache.capacity:
                        if any(rows):
                            break  # waits for the running rows to end; the cache is then allocated for it
                        cache = None
                    if cache is None:
                        cache = s.new_cache(self.max_batch, max(need, self.min_capacity))  # (B, kvh, capacity, hd) per K/V
                    self._waiting.popleft()
                    r = rows.index(None)
                    rows[r] = (job, RowText(s.tokenizer, job.config.stop))
                    admitted.append(r)
                self._running = [x[0] for x in rows if x is not None]
            for r in admitted:  # prefill each new request alone, into its own row
                job, text = rows[r]
                job.t_start, job.batch_size = time.perf_counter(), sum(x is not None for x in rows)
                if self.on_batch is not None:
                    self.on_batch(job.batch_size)
                try:
                    view = s.cache_rows(cache, r, r + 1)
                    ids = np.asarray([job.ids], dtype=np.int64)
                    n = ids.shape[1]
                    logits = None
                    for start in range(0, n, PREFILL_TOKEN_BUDGET):
                        if job.cancelled:
                            break
                        end = min(start + PREFILL_TOKEN_BUDGET, n)
                        logits = s.forward(ids[:, start:end], np.ones((1, end), np.int64), np.arange(start, end)[None], view)
                    view = None  # a view of the cache would keep its memory alive once the engine drops it
                    t = self._step_row(job, text, logits, first=True)  # a job cancelled before its prefill ends here
                except Exception as e:
                    self._fail([job], e)
                    t = None
                lengths[r] = len(job.ids)
                if t is None:
                    rows[r], lengths[r] = None, 0
                else:
                    next_ids[r, 0] = t
            live = [r for r, x in enumerate(rows) if x is not None]
            if not live:
                continue
            hi = live[-1] + 1  # decode rows [0, hi): a prefix of the cache's rows shares its memory
            width = int(lengths[live].max()) + 1  # a free row's length is 0
            mask = (np.arange(width)[None, :] <= lengths[:hi, None]).astype(np.int64)  # [hi, T]: row r attends slots 0..len_r
            for r in range(hi):
                if rows[r] is None:  # a free row in the range: a pad token that nothing reads
                    next_ids[r, 0], mask[r] = self.pad, 0
            try:
                logits = s.forward(next_ids[:hi], mask, lengths[:hi, None].copy(), cache)
            except Exception as e:  # the step's rows end; the worker goes on with new requests
                self._fail([rows[r][0] for r in live], e)
                rows = [None] * self.max_batch
                lengths[:] = 0
                cache = None
                continue
            lengths[live] += 1
            for r in live:
                job, text = rows[r]
                t = self._step_row(job, text, logits[r:r + 1], first=False)
                if t is None:
                    rows[r], lengths[r] = None, 0
                else:
                    next_ids[r, 0] = t
            with self._cond:
                self._running = [x[0] for x in rows if x is not None]
        for x in rows:  # stopped mid-way (engine stop)
            if x is not None:
                x[0]._finish(Failed("the server stopped before this answer ended", 503))

    # static batching (other graphs) ---------------------------------------------------------------------
    def _take(self) -> list[Job] | None:
        with self._cond:
            while not self._waiting and not self._stop:
                self._cond.wait()
            if self._stop:
                return None
            deadline = time.monotonic() + self.window_s
            while len(self._waiting) < self.max_batch and not self._stop:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = [self._waiting.popleft() for _ in range(min(self.max_batch, len(self._waiting)))]
            self._running = batch
            return batch

    def _loop_static(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            if not batch:
                continue
            try:
                self._run(batch)
            except Exception as e:  # a forward pass failed: this batch's rows end, the worker goes on
                self._fail(batch, e)
            finally:
                with self._cond:
                    self._running = []

    def _run(self, batch: list[Job]) -> None:
        s, b = self.s, len(batch)
        now = time.perf_counter()
        for job in batch:
            job.t_start, job.batch_size = now, b
        if self.on_batch is not None:
            self.on_batch(b)
        p = max(len(j.ids) for j in batch)
        cap = p + max(j.config.max_new_tokens for j in batch)
        input_ids = np.full((b, p), self.pad, dtype=np.int64)  # [B, P], left-padded
        mask = np.zeros((b, cap), dtype=np.int64)  # [B, capacity]; left padding = zeros
        for r, j in enumerate(batch):
            input_ids[r, p - len(j.ids):] = j.ids
            mask[r, p - len(j.ids):p] = 1
        pos = np.cumsum(mask[:, :p], axis=1) - 1  # [B, P]; padded slots get a harmless 1 (as HF)
        pos[mask[:, :p] == 0] = 1
        next_pos = pos[:, -1:].copy() + 1  # [B, 1]
        cache = s.new_cache(b, cap)
        chunk = max(1, PREFILL_TOKEN_BUDGET // b)
        logits = None
        for start in range(0, p, chunk):  # chunked prefill: only the last chunk's last-position logits are used
            if all(j.cancelled for j in batch):
                break
            end = min(start + chunk, p)
            logits = s.forward(input_ids[:, start:end], mask[:, :end], pos[:, start:end], cache)
        rows = [RowText(s.tokenizer, j.config.stop) for j in batch]
        step_ids = np.full((b, 1), self.pad, dtype=np.int64)
        for step in range(cap - p):
            for r, j in enumerate(batch):
                if not j.finished:
                    t = self._step_row(j, rows[r], logits[r:r + 1], first=step == 0)
                    if t is not None:
                        step_ids[r, 0] = t
            alive = [not j.finished for j in batch]
            if not any(alive) or self._stop:
                break
            step_ids[[not a for a in alive], 0] = self.pad  # a finished row feeds pad tokens until the batch ends
            mask[:, p + step] = 1
            logits = s.forward(step_ids, mask[:, :p + step + 1], next_pos, cache)
            next_pos += 1
        for j in batch:  # stopped mid-way (engine stop)
            j._finish(Failed("the server stopped before this answer ended", 503))

    @staticmethod
    def _end(job: Job, row: RowText, reason: str) -> None:
        rest = row.flush()  # text held back for a possible stop string, or an incomplete UTF-8 tail
        if rest:
            job._send(Piece(rest))
        job._finish(Done(reason, job.produced))
