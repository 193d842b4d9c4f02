"""Counters and histograms of `edgedelta serve`, rendered in Prometheus' text format (0.0.4)
for GET /metrics. Written by hand (a few dozen lines) rather than pulling prometheus_client
onto the device. Thread-safe: the event loop and the engine's worker both record."""

from __future__ import annotations

import threading
from collections import defaultdict

# seconds: from a 10 ms step on a fast host to a minute-long answer on a Pi
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        for i, b in enumerate(self.buckets):
            if v <= b:
                self.counts[i] += 1
        self.sum += v
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out = [f'{name}_bucket{{le="{b:g}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        out += [f'{name}_bucket{{le="+Inf"}} {self.count}', f"{name}_sum {self.sum:.6f}", f"{name}_count {self.count}"]
        return out


_HELP = {
    "edgedelta_requests_total": ("counter", "requests answered, by endpoint and HTTP status"),
    "edgedelta_prompt_tokens_total": ("counter", "prompt tokens of requests that ran"),
    "edgedelta_completion_tokens_total": ("counter", "tokens generated"),
    "edgedelta_requests_cancelled_total": ("counter", "requests whose client went away before the answer ended"),
    "edgedelta_request_duration_seconds": ("histogram", "from the request's arrival to its last byte"),
    "edgedelta_time_to_first_token_seconds": ("histogram", "from the request's arrival to its first generated token"),
    "edgedelta_time_per_output_token_seconds": ("histogram", "per request: decode time / tokens after the first"),
    "edgedelta_queue_wait_seconds": ("histogram", "from submission until a batch took the request"),
    "edgedelta_batch_size": ("histogram", "rows per batch the engine ran"),
}


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cancelled = 0
        self.hist = {
            "edgedelta_request_duration_seconds": Histogram(LATENCY_BUCKETS),
            "edgedelta_time_to_first_token_seconds": Histogram(LATENCY_BUCKETS),
            "edgedelta_time_per_output_token_seconds": Histogram(LATENCY_BUCKETS),
            "edgedelta_queue_wait_seconds": Histogram(LATENCY_BUCKETS),
            "edgedelta_batch_size": Histogram(BATCH_BUCKETS),
        }

    def request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1

    def observe(self, name: str, v: float) -> None:
        with self._lock:
            self.hist[name].observe(v)

    def tokens(self, prompt: int, completion: int) -> None:
        with self._lock:
            self.prompt_tokens += prompt
            self.completion_tokens += completion

    def cancel(self) -> None:
        with self._lock:
            self.cancelled += 1

    def render(self, gauges: dict[str, tuple[float, str]]) -> str:
        """The exposition text; `gauges`: name -> (value, help) read at scrape time (queue depth, RSS, ...)."""
        out: list[str] = []

        def head(name, kind, help_):
            out.extend([f"# HELP {name} {help_}", f"# TYPE {name} {kind}"])

        with self._lock:
            head("edgedelta_requests_total", *_HELP["edgedelta_requests_total"])
            for (endpoint, status), n in sorted(self.requests.items()):
                out.append(f'edgedelta_requests_total{{endpoint="{endpoint}",status="{status}"}} {n}')
            for name, v in (("edgedelta_prompt_tokens_total", self.prompt_tokens),
                            ("edgedelta_completion_tokens_total", self.completion_tokens),
                            ("edgedelta_requests_cancelled_total", self.cancelled)):
                head(name, *_HELP[name])
                out.append(f"{name} {v}")
            for name, h in self.hist.items():
                head(name, *_HELP[name])
                out.extend(h.lines(name))
        for name, (v, help_) in gauges.items():
            head(name, "gauge", help_)
            out.append(f"{name} {v:g}")
        return "\n".join(out) + "\n"
