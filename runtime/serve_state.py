"""What `edgedelta serve` runs on: its configuration, and the state shared by the app's
handlers (the loading thread, the engine once ready, auth, draining, prompt encoding and the
sampling settings of each request)."""

from __future__ import annotations

import hmac
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from starlette.requests import Request

from edgedelta.errors import ConfigError, EdgeDeltaError

from .sampling import GenerationConfig
from .serve_engine import Done, Engine, Failed, Job
from .serve_metrics import Metrics
from .serve_protocol import ApiError, CompletionRequest
from .session import PROVIDERS, Session

log = logging.getLogger("edgedelta.serve")

@dataclass(frozen=True)
class ServeConfig:
    """How `edgedelta serve` runs an artifact."""

    artifact: Path
    provider: str = "auto"  # auto|cpu|cuda (Session.from_dir)
    threads: int | None = None  # ONNX Runtime intra-op threads (None: its default, one per core)
    api_key: str | None = None  # when set, /v1/* needs `Authorization: Bearer <key>`
    max_queue: int = 64  # requests that may wait for a batch; beyond: 429 + Retry-After
    max_batch: int = 8  # requests decoded together
    batch_window_ms: float = 10.0  # static batching: after a request arrives, wait this long for others to join its batch
    default_max_tokens: int = 256  # when a request gives no max_tokens (capped by the context left)
    retry_after_s: int = 1  # Retry-After of a 429 (queue full)

    def __post_init__(self):
        if self.provider not in PROVIDERS:
            raise ConfigError(f"unknown provider '{self.provider}'; allowed: {', '.join(PROVIDERS)}")
        for name, low, high in (("max_queue", 0, 100_000), ("max_batch", 1, 256), ("default_max_tokens", 1, None),
                                ("retry_after_s", 0, 3600)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low or (high is not None and v > high):
                raise ConfigError(f"{name} must be an integer in [{low}, {high or 'inf'}], got {v!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"threads must be an integer >= 1, got {self.threads!r}")
        if not 0 <= self.batch_window_ms <= 10_000:
            raise ConfigError(f"batch_window_ms must be in [0, 10000], got {self.batch_window_ms!r}")
        if self.api_key is not None and (not self.api_key or any(c.isspace() for c in self.api_key)):
            raise ConfigError("the API key must be a non-empty string without whitespace")


class ServeState:
    """What the routes share: the config, the loaded session and engine (once ready), metrics."""

    def __init__(self, cfg: ServeConfig, model_id: str, on_fatal: Callable[[EdgeDeltaError], None] | None = None):
        self.cfg, self.model_id, self.on_fatal = cfg, model_id, on_fatal
        self.status = "loading"  # loading | ready | draining | failed
        self.session: Session | None = None
        self.engine: Engine | None = None
        self.metrics = Metrics()
        self.created = int(time.time())
        self._loader = threading.Thread(target=self._load, name="edgedelta-serve-load", daemon=True)

    # ---- loading, draining -------------------------------------------------------------------------
    def start_loading(self) -> None:
        self._loader.start()

    def _load(self) -> None:
        t0 = time.perf_counter()
        try:
            sess = Session.from_dir(self.cfg.artifact, provider=self.cfg.provider, threads=self.cfg.threads, verify=True)
            if sess.tokenizer is None:
                raise ConfigError(f"artifact '{self.cfg.artifact}' has no tokenizer; the server needs one")
            engine = Engine(sess, self.cfg.max_batch, self.cfg.max_queue, self.cfg.batch_window_ms / 1000,
                            on_batch=lambda n: self.metrics.observe("edgedelta_batch_size", n))
            engine.start()
            _warm_up(engine, sess)
        except Exception as e:
            err = e if isinstance(e, EdgeDeltaError) else EdgeDeltaError(f"cannot load '{self.cfg.artifact}': "
                                                                         f"{type(e).__name__}: {e}")
            self.status = "failed"
            log.error("load failed: %s", " ".join(str(err).split()))
            if self.on_fatal is not None:
                self.on_fatal(err)
            return
        self.session, self.engine = sess, engine
        if self.status == "loading":
            self.status = "ready"
        log.info("ready: model '%s' on %s, checksums verified, loaded in %.1f s (max_batch %d, max_queue %d)",
                 self.model_id, sess.provider, time.perf_counter() - t0, self.cfg.max_batch, self.cfg.max_queue)

    def begin_drain(self) -> None:
        """Stop taking requests; those queued or running finish (SIGTERM)."""
        if self.status != "failed":
            self.status = "draining"
        if self.engine is not None:
            self.engine.drain()
            log.info("draining: %d running, %d queued; new requests get 503", self.engine.running, self.engine.queue_depth)

    def shutdown(self) -> None:
        if self.engine is not None:
            self.engine.stop()

    # ---- request checks ----------------------------------------------------------------------------
    def check_auth(self, request: Request) -> None:
        if self.cfg.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.cfg.api_key.encode()):
            raise ApiError(401, "incorrect or missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")

    def check_ready(self) -> Engine:
        if self.status == "ready" and self.engine is not None:
            return self.engine
        if self.status == "draining":
            raise ApiError(503, "the server is shutting down", code="shutting_down", type="server_error",
                           headers={"Retry-After": "5", "Connection": "close"})
        if self.status == "failed":
            raise ApiError(503, "the model failed to load (see the server log)", code="model_not_loaded", type="server_error")
        raise ApiError(503, "the model is loading (GET /health says when it is ready)", code="model_loading",
                       type="server_error", headers={"Retry-After": "2"})

    def encode(self, req: CompletionRequest) -> list[int]:
        """The request's prompt as token ids (chat: through the artifact's chat template)."""
        sess = self.session
        tok = sess.tokenizer
        if req.kind == "chat":
            if not getattr(tok, "chat_template", None):
                raise ApiError(400, f"model '{self.model_id}' has no chat template; use /v1/completions",
                               param="messages", code="no_chat_template")
            try:
                text = tok.apply_chat_template(list(req.messages), tokenize=False, add_generation_prompt=True)
            except Exception as e:  # the template itself refuses (e.g. a role order it does not allow)
                raise ApiError(400, f"the chat template refuses these messages: {' '.join(str(e).split())}",
                               param="messages") from None
            ids = tok(text, add_special_tokens=False)["input_ids"]
        elif isinstance(req.prompt, str):
            ids = tok(req.prompt)["input_ids"]
        else:
            vocab = sess.artifact.vocab_size
            bad_id = next((t for t in req.prompt if t >= vocab), None)
            if bad_id is not None:
                raise ApiError(400, f"token id {bad_id} in 'prompt' is outside the vocabulary (0..{vocab - 1})", param="prompt")
            ids = list(req.prompt)
        if not ids:
            raise ApiError(400, f"'{req.prompt_param}' is empty after tokenisation", param=req.prompt_param)
        return list(ids)

    def generation_config(self, req: CompletionRequest, n_prompt: int) -> GenerationConfig:
        """Sampling settings of one row, with max_tokens checked against the context."""
        limit = self.session.artifact.max_positions
        if limit is not None and n_prompt >= limit:
            raise ApiError(400, f"the prompt has {n_prompt} tokens; this model's context is {limit} tokens",
                           param=req.prompt_param, code="context_length_exceeded")
        max_tokens = req.max_tokens
        if max_tokens is None:
            max_tokens = self.cfg.default_max_tokens if limit is None else min(self.cfg.default_max_tokens, limit - n_prompt)
        elif limit is not None and n_prompt + max_tokens > limit:
            raise ApiError(400, f"max_tokens {max_tokens} + the prompt's {n_prompt} tokens exceed this model's context "
                                f"of {limit} tokens (at most {limit - n_prompt} here)", param="max_tokens",
                           code="context_length_exceeded")
        greedy = req.temperature == 0 or req.top_p == 0
        return GenerationConfig(max_new_tokens=max_tokens, do_sample=not greedy,
                                temperature=req.temperature if not greedy else 1.0,
                                top_p=req.top_p if not greedy else 1.0, seed=req.seed, stop=req.stop,
                                eos=not req.ignore_eos)


def _warm_up(engine: Engine, sess: Session) -> None:
    """One short batch before 'ready', so the first client does not pay ONNX Runtime's first-run cost."""
    done = threading.Event()
    pad = engine.pad
    engine.submit(Job([pad] * 8, GenerationConfig(max_new_tokens=2, eos=False), emit=lambda ev: done.set()
                      if isinstance(ev, (Done, Failed)) else None))
    done.wait(120)


# ---- per-request bookkeeping ----------------------------------------------------------------------------
