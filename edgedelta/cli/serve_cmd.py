"""`edgedelta serve ART`: an OpenAI-compatible HTTP server on the device runtime (no network
needed, no torch): /v1/chat/completions, /v1/completions, /v1/models, /health, /metrics.

Concurrent requests are decoded together (--max-batch rows). On an artifact whose KV cache is
updated in place (the GroupQueryAttention graph) a request joins the running batch at the next
decode step (continuous batching); on other graphs requests that arrive within
--batch-window-ms form a batch that runs to its end. At most --max-queue wait for a row;
beyond that a request gets 429 with Retry-After. The artifact's checksums are
verified before /health says ready. SIGTERM (systemctl stop) stops taking requests, lets the
queued and running ones finish for up to --drain-seconds, then exits 0. One log line per
request on stderr."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys

from ..errors import ConfigError
from .common import nonneg_int, number_in, positive_int


def _port(text: str) -> int:
    if not text.strip().lstrip("-").isdigit():
        raise argparse.ArgumentTypeError(f"'{text}' is not a port number")
    if not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 1..65535, got {int(text)}")
    return int(text)


def _seconds(text: str) -> float:
    return number_in(text, 0.0, 3600.0, "seconds", low_open=True)


def _millis(text: str) -> float:
    return number_in(text, 0.0, 10_000.0, "milliseconds")


def add_parser(subparsers):
    p = subparsers.add_parser("serve", help="OpenAI-compatible HTTP server over an ONNX artifact (batched)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifact", help="artifact folder written by `edgedelta export`")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: every interface)")
    p.add_argument("--port", type=_port, default=8080, help="TCP port (default 8080)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/* (default: the "
                                                   "EDGEDELTA_API_KEY environment variable; unset: no key)")
    p.add_argument("--max-queue", type=nonneg_int, default=64, help="requests that may wait for a batch (default 64)")
    p.add_argument("--max-batch", type=positive_int, default=8, help="requests decoded together (default 8; 1: no batching)")
    p.add_argument("--provider", choices=("auto", "cpu", "cuda"), default="auto", help="auto|cpu|cuda (auto falls back to CPU)")
    p.add_argument("--threads", type=positive_int, default=None, help="ONNX Runtime intra-op threads (default: one per core)")
    p.add_argument("--drain-seconds", type=_seconds, default=30.0, help="on SIGTERM, how long running requests may "
                                                                        "finish (default 30)")
    p.add_argument("--batch-window-ms", type=_millis, default=10.0, help="graphs batched statically (a concatenated KV "
                   "cache): after a request arrives, how long to wait for others to join its batch (default 10)")
    p.add_argument("--default-max-tokens", type=positive_int, default=256,
                   help="max_tokens of a request that gives none (default 256, capped by the context)")
    return p


def _check_listen(host: str, port: int) -> None:
    """Refuse a host that does not resolve or a port already taken, before the model loads."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ConfigError(f"--host '{host}' is not an address of this machine: {e.strerror}") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            s.bind(addr)
        except OSError as e:
            raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror} (another server? pick --port)") from None


def _logger() -> logging.Logger:
    log = logging.getLogger("edgedelta.serve")
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s edgedelta serve: %(message)s"))
        log.addHandler(h)
        log.setLevel(logging.INFO)
        log.propagate = False
    return log


def run(args) -> int:
    import uvicorn

    from ..runtime.artifact import Artifact
    from ..runtime.serve_app import create_app
    from ..runtime.serve_state import ServeConfig, ServeState
    from ..runtime.session import resolve_provider

    api_key = args.api_key if args.api_key is not None else (os.environ.get("EDGEDELTA_API_KEY") or None)
    cfg = ServeConfig(artifact=args.artifact, provider=args.provider, threads=args.threads, api_key=api_key,
                      max_queue=args.max_queue, max_batch=args.max_batch, batch_window_ms=args.batch_window_ms,
                      default_max_tokens=args.default_max_tokens)
    # quick checks first (the checksums take seconds on a large artifact: the server verifies them while /health says loading)
    art = Artifact.open(args.artifact, verify=False)
    art.check_decoder()
    _check_listen(args.host, args.port)
    resolve_provider(args.provider)
    log = _logger()

    state = ServeState(cfg, art.name)
    config = uvicorn.Config(create_app(state), host=args.host, port=args.port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=args.drain_seconds, lifespan="on", server_header=False)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):  # SIGTERM/SIGINT: drain first, then uvicorn's graceful stop
            if not self.should_exit:
                state.begin_drain()
            super().handle_exit(sig, frame)

    server = Server(config)
    fatal = []

    def on_fatal(err):  # the loader thread: the artifact failed its checks or did not load
        fatal.append(err)
        server.should_exit = True

    state.on_fatal = on_fatal
    log.info("model '%s' from %s on http://%s:%d (loading; /health says when ready)", art.name, art.path, args.host, args.port)
    # uvicorn re-raises the signal it stopped on once it has stopped; by then the drain is done, so it must not
    # turn into the CLI's KeyboardInterrupt (exit 130): a SIGTERM'd server exits 0
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    server.run()
    if fatal:
        raise fatal[0]
    log.info("stopped")
    return 0
