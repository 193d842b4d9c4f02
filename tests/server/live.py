"""Helpers for a live `edgedelta serve` in a subprocess on 127.0.0.1 (a free port), over a tiny artifact
with a 2,048-token context (long enough that a request of 1,500 tokens is still running when
a test disconnects or sends SIGTERM). The server runs as on a device install: every module of
every extra is made unimportable in its interpreter, as tests/test_packaging.py does."""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


API_KEY = "test-key-123"
LONG = 1500  # tokens of a request that must still be running while the test acts on it

_LEAN_SERVE = """
import sys
from edgedelta.extras import EXTRAS
for modules in EXTRAS.values():
    for m in modules:
        sys.modules[m] = None
from edgedelta.cli import main
sys.exit(main(sys.argv[1:]))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One server process; `log()` is its stderr so far."""

    def __init__(self, artifact: Path, tmp: Path, *flags: str):
        self.port = free_port()
        self.log_path = tmp / f"serve-{self.port}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-c", _LEAN_SERVE, "serve", str(artifact), "--port", str(self.port),
                                      "--provider", "cpu", "--threads", "1", *flags],
                                     stdout=subprocess.DEVNULL, stderr=self._log, env={**os.environ, "EDGEDELTA_API_KEY": ""})

    def wait_ready(self, timeout: float = 60.0) -> "Server":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}: {self.log()}")
            try:
                status, _, _ = request(self.port, "GET", "/health", timeout=2)
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not ready after {timeout} s: {self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


def request(port: int, method: str, path: str, body=None, headers=None, timeout: float = 30.0):
    """(status, headers, parsed JSON or text) of one request to 127.0.0.1:port."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        r = conn.getresponse()
        raw = r.read()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw.decode(errors="replace")
        return r.status, dict(r.getheaders()), parsed
    finally:
        conn.close()


def open_stream(port: int, body: dict, headers=None, timeout: float = 30.0):
    """Start a streaming request; returns (connection, response) with the status line read."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("POST", "/v1/completions", body=json.dumps({**body, "stream": True}).encode(),
                 headers={"Content-Type": "application/json", **(headers or {})})
    return conn, conn.getresponse()


def sse_events(resp, limit: int = 100_000):
    """The parsed `data:` events of a streaming response, up to [DONE] (bounded)."""
    for _ in range(limit):
        line = resp.readline()
        if not line:
            return
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        if line == b"data: [DONE]":
            return
        yield json.loads(line[6:])
